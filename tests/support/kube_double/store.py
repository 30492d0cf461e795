"""The object store of the Kubernetes API test double: writes, metadata, selectors, deletes.

Objects are plain dicts as the API serves them. Every public method takes `lock` itself; the
simulated controllers hold it across a whole tick and use the methods marked *internal*,
which work on the stored dicts in place.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import re
import threading
import time
import uuid
from collections.abc import Iterator

from .resources import BY_PLURAL, ResourceType

Key = tuple[str, str, str]  # plural, namespace ("" when cluster-scoped), name
PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")


class KubeStatusError(Exception):
    """A request the test double refuses; served as a Kubernetes `Status` with `code`."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return failure_status(self.code, self.reason, self.message)


def failure_status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def bad_request(message: str) -> KubeStatusError:
    return KubeStatusError(400, "BadRequest", message)


def not_found(rt: ResourceType, name: str) -> KubeStatusError:
    return KubeStatusError(404, "NotFound", f'{rt.qualified()} "{name}" not found')


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors ----------------------------------------------------------------------------

_SET_TERM = re.compile(r"^(\S+)\s+(in|notin)\s+\(([^)]*)\)$")
Requirement = tuple[str, str, frozenset[str]]  # key, operator (in, notin, exists, !), values


def parse_label_selector(selector: str) -> list[Requirement]:
    """`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`, comma-joined (AND)."""
    requirements: list[Requirement] = []
    for term in (t.strip() for t in re.split(r",(?![^()]*\))", selector) if t.strip()):
        if m := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(","))
            requirements.append((m.group(1), m.group(2), values))
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            requirements.append((key, "notin", frozenset([value])))
        elif "=" in term:
            key, value = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            requirements.append((key, "in", frozenset([value])))
        elif re.fullmatch(r"!?\s*[A-Za-z0-9._/-]+", term):
            negated = term.startswith("!")
            requirements.append((term.lstrip("! "), "!" if negated else "exists", frozenset()))
        else:
            raise bad_request(f"unable to parse requirement: {term!r}")
    return requirements


def labels_match(requirements: list[Requirement], obj: dict) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, values in requirements:
        ok = {
            "in": labels.get(key) in values,
            "notin": labels.get(key) not in values,
            "exists": key in labels,
            "!": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(selector: str) -> list[tuple[list[str], str, bool]]:
    """`metadata.name=x,status.phase!=Running`: (path, value, negated) per term."""
    terms = []
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        path, value = re.split(r"!=|==?", term, maxsplit=1)
        if not path or path == term:
            raise bad_request(f"invalid field selector: {term!r}")
        terms.append((path.split("."), value, "!=" in term))
    return terms


def fields_match(terms: list[tuple[list[str], str, bool]], obj: dict) -> bool:
    return all((_dig(obj, path) == value) != negated for path, value, negated in terms)


def _dig(obj: object, path: list[str]) -> str:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


# -- merging ------------------------------------------------------------------------------


def json_merge_patch(target: object, patch: object) -> object:
    """RFC 7386: objects merge recursively, `null` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def apply_merge(old: dict, body: dict) -> dict:
    """Server-side apply, simplified: labels and annotations merge, every other field the
    body names (spec, data, stringData, ...) is replaced, fields it leaves out are kept."""
    new = copy.deepcopy(old)
    for key, value in body.items():
        if key == "metadata":
            meta = new["metadata"]
            for mkey, mvalue in (value or {}).items():
                if mkey in ("labels", "annotations"):
                    meta[mkey] = {**(meta.get(mkey) or {}), **(mvalue or {})}
                elif mkey not in ("uid", "creationTimestamp", "generation", "managedFields"):
                    meta[mkey] = copy.deepcopy(mvalue)
        elif key != "status":
            new[key] = copy.deepcopy(value)
    if new.get("kind") == "Secret" and ("data" in body or "stringData" in body):
        new["data"] = copy.deepcopy(body.get("data") or {})  # the two are one field set
    return new


# -- defaults a real API server fills in ----------------------------------------------------


def _default(rt: ResourceType, obj: dict, old: dict | None) -> None:
    spec = obj.get("spec")
    if rt.kind == "Secret":
        obj.setdefault("type", "Opaque")
        data = obj.get("data") or {}
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data
    elif rt.kind == "Deployment" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        rolling = {"maxSurge": "25%", "maxUnavailable": "25%"}
        spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": rolling})
    elif rt.kind == "StatefulSet" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        retain = {"whenDeleted": "Retain", "whenScaled": "Retain"}
        spec.setdefault("persistentVolumeClaimRetentionPolicy", retain)
    elif rt.kind == "Job" and isinstance(spec, dict):
        uid = obj["metadata"]["uid"]
        for field, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6)):
            spec.setdefault(field, value)
        labels = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": obj["metadata"]["name"],
            "controller-uid": uid,
            "job-name": obj["metadata"]["name"],
        }
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    elif rt.kind == "Service" and isinstance(spec, dict):
        for field in ("clusterIP", "clusterIPs"):  # immutable once assigned
            if old is not None and old.get("spec", {}).get(field) and not spec.get(field):
                spec[field] = copy.deepcopy(old["spec"][field])
        if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("clusterIP"):
            address = ipaddress.ip_address("10.96.0.10") + int(uuid.uuid4().int % 60000)
            spec["clusterIP"] = str(address)
            spec["clusterIPs"] = [str(address)]
        spec.setdefault("type", "ClusterIP")
    elif rt.kind == "Pod" and isinstance(spec, dict):
        spec.setdefault("restartPolicy", "Always")


def _initial_status(rt: ResourceType) -> dict:
    return {
        "Namespace": {"phase": "Active"},
        "Pod": {"phase": "Pending"},
        "PersistentVolumeClaim": {"phase": "Pending"},
    }.get(rt.kind, {})


# -- the store ----------------------------------------------------------------------------


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[Key, dict] = {}
        self._rv = 0
        # uid -> time.monotonic() of the write that set the current generation
        self.generation_at: dict[str, float] = {}

    # reads -----------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict:
        labels = parse_label_selector(label_selector or "")
        fields = parse_field_selector(field_selector or "")
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for obj in self.iter(rt.plural, namespace)
                if labels_match(labels, obj) and fields_match(fields, obj)
            ]
            rv = str(self._rv)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def iter(self, plural: str, namespace: str | None = None) -> Iterator[dict]:
        """*Internal*: the stored dicts of one type, sorted by namespace and name."""
        for (p, ns, _name), obj in sorted(self._objects.items(), key=lambda kv: kv[0]):
            if p == plural and (namespace is None or ns == namespace):
                yield obj

    def find(self, plural: str, namespace: str, name: str) -> dict | None:
        """*Internal*: the stored dict, or None."""
        return self._objects.get(self._key(BY_PLURAL[plural], namespace, name))

    # writes ----------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: dict, dry_run: bool = False) -> dict:
        with self.lock:
            name = (body.get("metadata") or {}).get("name")
            if not name and (body.get("metadata") or {}).get("generateName"):
                body.setdefault("metadata", {})["name"] = (
                    body["metadata"]["generateName"] + (uuid.uuid4().hex[:5])
                )
            if (body.get("metadata") or {}).get("resourceVersion"):
                raise bad_request("resourceVersion should not be set on objects to be created")
            if self._objects.get(self._key(rt, namespace, str(name))) is not None:
                raise KubeStatusError(
                    409, "AlreadyExists", f'{rt.qualified()} "{name}" already exists'
                )
            return self._write(rt, namespace, body, None, dry_run)

    def apply(
        self, rt: ResourceType, namespace: str, name: str, body: dict, dry_run: bool = False
    ) -> dict:
        """Server-side apply: creates the object when absent, else merges (`apply_merge`)."""
        self._check_identity(rt, name, body)
        with self.lock:
            old = self._objects.get(self._key(rt, namespace, name))
            new = copy.deepcopy(body) if old is None else apply_merge(old, body)
            if old is None:
                new.setdefault("metadata", {}).pop("resourceVersion", None)
            return self._write(rt, namespace, new, old, dry_run)

    def merge_patch(
        self, rt: ResourceType, namespace: str, name: str, patch: dict, dry_run: bool = False
    ) -> dict:
        with self.lock:
            old = self._objects.get(self._key(rt, namespace, name))
            if old is None:
                raise not_found(rt, name)
            new = json_merge_patch(old, patch)
            assert isinstance(new, dict)
            if "resourceVersion" not in (patch.get("metadata") or {}):
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            new["metadata"]["name"] = name
            return self._write(rt, namespace, new, old, dry_run)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> dict:
        """Removes the object at once (no finalizers) and returns it. Background and
        Foreground delete its dependents (by ownerReferences), Orphan strips their
        ownerReferences. The default is Background, but Orphan for batch/v1 Jobs."""
        policy = propagation or ("Orphan" if rt.kind == "Job" else "Background")
        if policy not in PROPAGATION_POLICIES:
            raise bad_request(f"propagationPolicy {policy!r} is not one of {PROPAGATION_POLICIES}")
        with self.lock:
            key = self._key(rt, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise not_found(rt, name)
            if dry_run:
                return copy.deepcopy(obj)
            self._remove(key)
            if rt.kind == "Namespace":
                for other in [k for k in self._objects if k[1] == name]:
                    self._remove(other)
                obj["status"] = {"phase": "Terminating"}
            elif policy == "Orphan":
                self._orphan(obj["metadata"]["uid"])
            else:
                self._delete_dependents(obj["metadata"]["uid"])
            return obj

    def save(self, obj: dict) -> None:
        """*Internal*: a stored dict was changed in place; give it a new resourceVersion."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def set_status(self, obj: dict, status: dict) -> None:
        """*Internal*: replace a stored object's status, bumping resourceVersion if it changed."""
        if obj.get("status") != status:
            obj["status"] = status
            self.save(obj)

    # helpers ---------------------------------------------------------------------------

    @staticmethod
    def _key(rt: ResourceType, namespace: str, name: str) -> Key:
        return (rt.plural, namespace if rt.namespaced else "", name)

    @staticmethod
    def _check_identity(rt: ResourceType, name: str, body: dict) -> None:
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        for field, want in (("kind", rt.kind), ("apiVersion", rt.api_version)):
            if body.get(field) not in (None, want):
                raise bad_request(f"{field} {body.get(field)!r} does not match the URL ({want})")

    def _write(
        self, rt: ResourceType, namespace: str, new: dict, old: dict | None, dry_run: bool
    ) -> dict:
        new = copy.deepcopy(new)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta = new.setdefault("metadata", {})
        if not meta.get("name"):
            raise bad_request(f"{rt.kind}: metadata.name: Required value: name is required")
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if old is not None:
            sent = meta.get("resourceVersion")
            if sent and sent != old["metadata"]["resourceVersion"]:
                raise KubeStatusError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rt.qualified()} "{meta["name"]}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again",
                )
            for field in ("uid", "creationTimestamp", "generation"):
                meta[field] = old["metadata"][field]
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 0
        _default(rt, new, old)
        if old is None or new.get("spec") != old.get("spec"):
            meta["generation"] += 1
        if rt.has_status:
            new["status"] = copy.deepcopy(old["status"]) if old else _initial_status(rt)
        if dry_run:
            return new
        if old is None or meta["generation"] != old["metadata"]["generation"]:
            self.generation_at[meta["uid"]] = time.monotonic()
        self._objects[self._key(rt, namespace, meta["name"])] = new
        self.save(new)
        return copy.deepcopy(new)

    def _remove(self, key: Key) -> None:
        obj = self._objects.pop(key)
        self.generation_at.pop(obj["metadata"]["uid"], None)

    def _dependents(self, uid: str) -> list[tuple[Key, dict]]:
        return [
            (key, obj)
            for key, obj in self._objects.items()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _delete_dependents(self, uid: str) -> None:
        for key, obj in self._dependents(uid):
            if key in self._objects:
                self._remove(key)
                self._delete_dependents(obj["metadata"]["uid"])

    def _orphan(self, uid: str) -> None:
        for _key, obj in self._dependents(uid):
            refs = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if refs:
                obj["metadata"]["ownerReferences"] = refs
            else:
                del obj["metadata"]["ownerReferences"]
            self.save(obj)
