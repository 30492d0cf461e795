"""Step types and the schema of their properties: shared by the apiserver (validation at
PutWorkflow) and the executor (which runs them). One place names every type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from google.protobuf import json_format, struct_pb2

DEFAULT_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[Any], str | None]  # returns a problem, or None when the value is fine
    required: bool = False


@dataclass(frozen=True)
class StepType:
    name: str
    properties: tuple[Property, ...]
    default_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    needs_shell: bool = False

    def problems(self, props: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(property, problem) pairs for `props`; empty when they are valid."""
        known = {p.name: p for p in self.properties}
        found = [
            (name, f"unknown property for a {self.name} step; known: {', '.join(sorted(known))}")
            for name in props
            if name not in known
        ]
        for prop in self.properties:
            if prop.name not in props:
                if prop.required:
                    found.append((prop.name, f"required by a {self.name} step"))
                continue
            problem = prop.check(props[prop.name])
            if problem:
                found.append((prop.name, problem))
        return found


def plain_properties(properties: struct_pb2.Struct) -> dict[str, Any]:
    """A step's properties as plain JSON values.

    A protobuf Struct keeps every number as a double; whole numbers come back as ints here, so
    `replicas: 2` reaches a Kubernetes API server (which refuses 2.0 for an integer field) and an
    HTTP body as it was written.
    """
    return _whole_numbers(json_format.MessageToDict(properties))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _command(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "must not be empty"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return None
    return "must be a non-empty list of strings, or a string run by sh -c"


def _string_map(value: Any) -> str | None:
    if isinstance(value, dict) and all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        return None
    return "must be a map of names to strings"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _non_negative_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    return None if value >= 0 else "must not be negative"


def _http_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host (got {value!r})"
    return None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in choices:
            return None
        return f"must be one of {', '.join(choices)} (got {value!r})"

    return check


def _http_method(value: Any) -> str | None:
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return _one_of(*methods)(value.upper() if isinstance(value, str) else value)


def _status_codes(value: Any) -> str | None:
    codes = value if isinstance(value, list) and value else [value]
    for code in codes:
        if isinstance(code, float) and code.is_integer():
            code = int(code)
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            return "must be an HTTP status code (100-599) or a non-empty list of them"
    return None


def _any(value: Any) -> str | None:
    return None


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def _dns_label(value: Any) -> str | None:
    if isinstance(value, str) and _DNS_LABEL.match(value):
        return None
    return "must be a Kubernetes name: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"


def _image(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value):
        return None
    return "must be a container image reference, e.g. nginx:1.27"


def _string_list(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None
    return "must be a list of strings"


def _int_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}"
        return None

    return check


def _ports(value: Any) -> str | None:
    if isinstance(value, list) and all(_int_between(1, 65535)(p) is None for p in value):
        return None
    return "must be a list of port numbers (1-65535)"


def _storage(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a map with size, storageClass and mountPath"
    unknown = set(value) - {"size", "storageClass", "mountPath"}
    if unknown:
        return f"has unknown keys {sorted(unknown)}; known: size, storageClass, mountPath"
    if "size" in value and not (isinstance(value["size"], str) and _QUANTITY.match(value["size"])):
        return "size must be a quantity such as 10Gi or 500Mi"
    for key in ("storageClass", "mountPath"):
        if key in value and not isinstance(value[key], str):
            return f"{key} must be a string"
    return None


def _manifests(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            docs = [d for d in yaml.safe_load_all(value) if d]
        except yaml.YAMLError as exc:
            return f"is not valid YAML: {exc}"
    elif isinstance(value, list):
        docs = value
    else:
        return "must be a list of Kubernetes objects, or a YAML string of them"
    if not docs:
        return "must hold at least one object"
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            return f"[{i}] must be a Kubernetes object (a map)"
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                return f"[{i}] needs {key}"
        name = (
            (doc.get("metadata") or {}).get("name")
            if isinstance(doc.get("metadata"), dict)
            else None
        )
        if not isinstance(name, str) or not name:
            return f"[{i}] ({doc['kind']}) needs metadata.name"
    return None


SHELL = StepType(
    "shell",
    (
        Property("command", _command, required=True),
        Property("env", _string_map),
        Property("workingDir", _string),
    ),
    needs_shell=True,
)
SLEEP = StepType("sleep", (Property("seconds", _non_negative_number, required=True),))
#: Kubernetes steps may wait long for rollouts: their default timeout is larger.
KUBE_TIMEOUT_SECONDS = 1200
_WORKLOAD = (
    Property("image", _image, required=True),
    Property("replicas", _int_between(0, 1000)),
    Property("ports", _ports),
    Property("env", _string_map),
    Property("command", _string_list),
    Property("args", _string_list),
    Property("namespace", _dns_label),
    Property("name", _dns_label),
)
APPLY = StepType(
    "apply",
    (Property("manifests", _manifests, required=True), Property("namespace", _dns_label)),
    KUBE_TIMEOUT_SECONDS,
)
K8S_JOB = StepType(
    "k8s-job",
    (
        Property("image", _image, required=True),
        Property("command", _string_list),
        Property("args", _string_list),
        Property("env", _string_map),
        Property("namespace", _dns_label),
    ),
    KUBE_TIMEOUT_SECONDS,
)
WEBSERVICE = StepType("webservice", _WORKLOAD, KUBE_TIMEOUT_SECONDS)
STORE = StepType("store", (*_WORKLOAD, Property("storage", _storage)), KUBE_TIMEOUT_SECONDS)
_DATA = (
    Property("data", _string_map, required=True),
    Property("namespace", _dns_label),
    Property("name", _dns_label),
)
CONFIG = StepType("config", _DATA, KUBE_TIMEOUT_SECONDS)
SECRET = StepType("secret", _DATA, KUBE_TIMEOUT_SECONDS)
HTTP = StepType(
    "http",
    (
        Property("url", _http_url, required=True),
        Property("method", _http_method),
        Property("headers", _string_map),
        Property("body", _any),  # a string is sent as is; anything else as JSON
        Property("expectStatus", _status_codes),
        Property("followRedirects", _one_of("same-host", "all", "none")),
    ),
)

#: The step types this version of flowq can run.
#: Step types whose steps create objects that outlive them (and so need cleaning when their
#: owner is lost).
KUBE_STEP_TYPES = frozenset({"apply", "k8s-job", "webservice", "store", "config", "secret"})

STEP_TYPES: dict[str, StepType] = {
    t.name: t for t in (SHELL, SLEEP, HTTP, APPLY, K8S_JOB, WEBSERVICE, STORE, CONFIG, SECRET)
}
