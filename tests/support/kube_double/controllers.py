"""Simulated controllers of the Kubernetes API test double, run by `Simulator.tick()`.

Each tick, under the store's lock: pods get their status from the pretend node
(`pods.pod_status`), claims bind, then the Deployment, StatefulSet, DaemonSet and Job
controllers create and delete pods and write their workload's status. Statuses omit zero
counts as a real server does (`readyReplicas` is absent, not 0). The rules:

- Deployment: pods `<name>-<hash>-<rand5>` (label `pod-template-hash`) for the current
  template; old pods go once the new ones are all ready (at once for `Recreate`).
  Progressing is False/ProgressDeadlineExceeded after `progressDeadlineSeconds` without
  completing. Owner of the pods is the Deployment itself (no ReplicaSets are served).
- StatefulSet: pods `<name>-<ordinal>`; OrderedReady creates ordinal i only once all lower
  ones are ready; an update replaces one outdated pod at a time, highest ordinal first,
  while the others are ready. `volumeClaimTemplates` give PVCs `<template>-<name>-<ordinal>`,
  kept when the StatefulSet goes unless `persistentVolumeClaimRetentionPolicy.whenDeleted`
  is Delete.
- DaemonSet: one node, so one pod `<name>-<rand5>`, or none when the node does not match
  the template's nodeSelector (desiredNumberScheduled 0, as a real cluster does).
- Job: `min(parallelism, completions - succeeded)` pods `<job>-<rand5>`; a failed pod is
  replaced at once (no exponential back-off) until `failed > backoffLimit`, then
  Failed/BackoffLimitExceeded; `activeDeadlineSeconds` after startTime, active pods are
  deleted and the Job fails with DeadlineExceeded.
- PersistentVolumeClaim: Bound `ready_after` seconds after it was first seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time

from . import pods as node
from .resources import BY_PLURAL
from .store import Store, now_rfc3339

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses in generated names
PODS = BY_PLURAL["pods"]


def rand_suffix(length: int = 5) -> str:
    return "".join(random.choice(SAFE_ALPHABET) for _ in range(length))


def template_hash(template: dict) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def owner_ref(obj: dict) -> dict:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(obj: dict) -> dict:
    return obj["metadata"].get("labels") or {}


def _drop_zeros(status: dict, *fields: str) -> dict:
    return {k: v for k, v in status.items() if not (k in fields and v == 0)}


def _conditions(old: list[dict] | None, new: list[tuple[str, bool, str, str]]) -> list[dict]:
    """Conditions (type, status, reason, message), keeping the times of unchanged ones."""
    previous = {c["type"]: c for c in old or []}
    out = []
    for kind, status, reason, message in new:
        cond = {"type": kind, "status": "True" if status else "False", "reason": reason}
        cond["message"] = message
        before = previous.get(kind)
        if before and all(before.get(k) == cond[k] for k in ("status", "reason", "message")):
            out.append(before)
            continue
        stamp = now_rfc3339()
        out.append({**cond, "lastTransitionTime": stamp, "lastUpdateTime": stamp})
    return out


class Simulator:
    def __init__(self, store: Store, ready_after: float) -> None:
        self.store = store
        self.ready_after = ready_after
        self._born: dict[str, tuple[float, float]] = {}  # uid -> (monotonic, wall) first seen
        self._job_started: dict[str, float] = {}  # job uid -> monotonic startTime

    def tick(self) -> None:
        with self.store.lock:
            now = time.monotonic()
            live = {o["metadata"]["uid"] for p in BY_PLURAL for o in self.store.iter(p)}
            for table in (self._born, self._job_started):
                for uid in [u for u in table if u not in live]:
                    del table[uid]
            for pod in list(self.store.iter("pods")):
                self._pod(pod, now)
            for claim in list(self.store.iter("persistentvolumeclaims")):
                self._claim(claim, now)
            for kind, reconcile in (
                ("deployments", self._deployment),
                ("statefulsets", self._statefulset),
                ("daemonsets", self._daemonset),
                ("jobs", self._job),
            ):
                for obj in list(self.store.iter(kind)):
                    reconcile(obj, now)

    # -- pods and claims -------------------------------------------------------------------

    def _age(self, obj: dict, now: float) -> tuple[float, float]:
        born = self._born.setdefault(obj["metadata"]["uid"], (now, time.time()))
        return now - born[0], born[1]

    def _pod(self, pod: dict, now: float) -> None:
        age, born = self._age(pod, now)
        if node.schedulable(pod["spec"]) and pod["spec"].get("nodeName") != node.NODE_NAME:
            pod["spec"]["nodeName"] = node.NODE_NAME
            self.store.save(pod)
        self.store.set_status(pod, node.pod_status(pod, age, born, self.ready_after))

    def _claim(self, claim: dict, now: float) -> None:
        age, _born = self._age(claim, now)
        if age < self.ready_after or claim.get("status", {}).get("phase") == "Bound":
            return
        spec = claim.setdefault("spec", {})
        spec.setdefault("volumeName", f"pvc-{claim['metadata']['uid']}")
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        status = {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"]}
        status["capacity"] = {"storage": storage}
        self.store.set_status(claim, status)

    def _owned_pods(self, owner: dict) -> list[dict]:
        uid, ns = owner["metadata"]["uid"], owner["metadata"]["namespace"]
        owned = [
            pod
            for pod in self.store.iter("pods", ns)
            if any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or [])
        ]
        return sorted(owned, key=lambda p: self._born.get(p["metadata"]["uid"], (math.inf,)))

    def _create_pod(self, owner: dict, name: str, labels: dict, now: float) -> dict:
        template = owner["spec"].get("template") or {}
        meta = template.get("metadata") or {}
        body = {
            "metadata": {
                "name": name,
                "labels": {**(meta.get("labels") or {}), **labels},
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": json.loads(json.dumps(template.get("spec") or {})),
        }
        pod = self.store.create(PODS, owner["metadata"]["namespace"], body)
        self._born[pod["metadata"]["uid"]] = (now, time.time())
        return pod

    def _delete_pod(self, pod: dict) -> None:
        self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])

    # -- workloads -------------------------------------------------------------------------

    def _deployment(self, deploy: dict, now: float) -> None:
        spec, meta = deploy["spec"], deploy["metadata"]
        replicas, pod_hash = spec.get("replicas", 1), template_hash(spec.get("template") or {})
        rs_name = f"{meta['name']}-{pod_hash}"
        current = [
            p for p in self._owned_pods(deploy) if _labels(p).get("pod-template-hash") == pod_hash
        ]
        for _ in range(replicas - len(current)):
            labels = {"pod-template-hash": pod_hash}
            current.append(self._create_pod(deploy, f"{rs_name}-{rand_suffix()}", labels, now))
        for pod in current[replicas:]:
            self._delete_pod(pod)
        new_ready = sum(node.is_ready(p) for p in current[:replicas])
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        for pod in self._owned_pods(deploy):
            if _labels(pod).get("pod-template-hash") != pod_hash and (
                recreate or new_ready >= replicas
            ):
                self._delete_pod(pod)
        pods = self._owned_pods(deploy)
        ready = sum(node.is_ready(p) for p in pods)
        updated = sum(_labels(p).get("pod-template-hash") == pod_hash for p in pods)
        complete = updated == replicas == len(pods) == ready
        max_unavailable = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get(
            "maxUnavailable", "25%"
        )
        if isinstance(max_unavailable, str):
            max_unavailable = math.floor(replicas * int(max_unavailable.rstrip("%")) / 100)
        available = ready >= replicas - max_unavailable
        since_change = now - self.store.generation_at.get(meta["uid"], now)
        if complete:
            progressing = (
                True,
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        elif since_change > spec.get("progressDeadlineSeconds", 600):
            progressing = (
                False,
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{rs_name}" has timed out progressing.',
            )
        else:
            progressing = (True, "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        status = deploy.get("status") or {}
        if available:
            availability = (
                True,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            availability = (
                False,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        conditions = _conditions(
            status.get("conditions"), [("Available", *availability), ("Progressing", *progressing)]
        )
        new_status = {
            "observedGeneration": meta["generation"],
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(replicas - ready, 0),
            "conditions": conditions,
        }
        fields = (
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        )
        self.store.set_status(deploy, _drop_zeros(new_status, *fields))

    def _statefulset(self, sts: dict, now: float) -> None:
        spec, meta = sts["spec"], sts["metadata"]
        name, replicas = meta["name"], spec.get("replicas", 1)
        revision = f"{name}-{template_hash(spec.get('template') or {})}"
        by_ordinal = {}
        for pod in self._owned_pods(sts):
            ordinal = int(pod["metadata"]["name"].rsplit("-", 1)[1])
            if ordinal >= replicas:
                self._delete_pod(pod)
            else:
                by_ordinal[ordinal] = pod
        self._claims_for(sts, replicas)
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        for ordinal in range(replicas):
            if ordinal in by_ordinal:
                continue
            if ordered and not all(
                o in by_ordinal and node.is_ready(by_ordinal[o]) for o in range(ordinal)
            ):
                break
            labels = {
                "controller-revision-hash": revision,
                "statefulset.kubernetes.io/pod-name": f"{name}-{ordinal}",
                "apps.kubernetes.io/pod-index": str(ordinal),
            }
            by_ordinal[ordinal] = self._create_pod(sts, f"{name}-{ordinal}", labels, now)
        outdated = [
            o
            for o, p in by_ordinal.items()
            if _labels(p).get("controller-revision-hash") != revision
        ]
        if outdated and all(node.is_ready(p) for o, p in by_ordinal.items() if o != max(outdated)):
            self._delete_pod(by_ordinal.pop(max(outdated)))
        pods = list(by_ordinal.values())
        ready = sum(node.is_ready(p) for p in pods)
        updated = sum(_labels(p).get("controller-revision-hash") == revision for p in pods)
        status = sts.get("status") or {}
        current = status.get("currentRevision") or revision
        if updated == replicas == ready:
            current = revision
        new_status = {
            "observedGeneration": meta["generation"],
            "replicas": len(pods),
            "readyReplicas": ready,
            "currentReplicas": sum(
                _labels(p).get("controller-revision-hash") == current for p in pods
            ),
            "updatedReplicas": updated,
            "availableReplicas": ready,
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        self.store.set_status(
            sts, _drop_zeros(new_status, "readyReplicas", "currentReplicas", "updatedReplicas")
        )

    def _claims_for(self, sts: dict, replicas: int) -> None:
        spec, meta = sts["spec"], sts["metadata"]
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        delete = (spec.get("persistentVolumeClaimRetentionPolicy") or {}).get(
            "whenDeleted"
        ) == "Delete"
        for template in spec.get("volumeClaimTemplates") or []:
            tmeta = template.get("metadata") or {}
            for ordinal in range(replicas):
                claim_name = f"{tmeta['name']}-{meta['name']}-{ordinal}"
                if self.store.find("persistentvolumeclaims", meta["namespace"], claim_name):
                    continue
                body = {
                    "metadata": {
                        "name": claim_name,
                        "labels": {**(tmeta.get("labels") or {}), **selector},
                        **({"ownerReferences": [owner_ref(sts)]} if delete else {}),
                    },
                    "spec": json.loads(json.dumps(template.get("spec") or {})),
                }
                self.store.create(BY_PLURAL["persistentvolumeclaims"], meta["namespace"], body)

    def _daemonset(self, ds: dict, now: float) -> None:
        spec, meta = ds["spec"], ds["metadata"]
        template = spec.get("template") or {}
        revision = template_hash(template)
        desired = 1 if node.schedulable(template.get("spec") or {}) else 0
        pods = self._owned_pods(ds)
        for pod in pods:
            if _labels(pod).get("controller-revision-hash") != revision or not desired:
                self._delete_pod(pod)
        pods = self._owned_pods(ds)
        if desired and not pods:
            labels = {
                "controller-revision-hash": revision,
                "pod-template-generation": str(meta["generation"]),
            }
            pods = [self._create_pod(ds, f"{meta['name']}-{rand_suffix()}", labels, now)]
        ready = sum(node.is_ready(p) for p in pods)
        new_status = {
            "observedGeneration": meta["generation"],
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": len(pods),
            "numberMisscheduled": 0,
            "numberReady": ready,
            "updatedNumberScheduled": len(pods),
            "numberAvailable": ready,
            "numberUnavailable": desired - ready,
        }
        self.store.set_status(
            ds,
            _drop_zeros(
                new_status, "updatedNumberScheduled", "numberAvailable", "numberUnavailable"
            ),
        )

    def _job(self, job: dict, now: float) -> None:
        spec, meta = job["spec"], job["metadata"]
        status = dict(job.get("status") or {})
        done = any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True"
            for c in status.get("conditions") or []
        )
        if done or spec.get("suspend"):
            return
        started = self._job_started.setdefault(meta["uid"], now)
        status.setdefault("startTime", now_rfc3339())
        pods = self._owned_pods(job)
        active = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
        succeeded = sum(p["status"].get("phase") == "Succeeded" for p in pods)
        failed = sum(p["status"].get("phase") == "Failed" for p in pods)
        deadline = spec.get("activeDeadlineSeconds")
        ended: tuple[str, str, str] | None = None
        if succeeded >= spec.get("completions", 1):
            ended = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        elif failed > spec.get("backoffLimit", 6):
            ended = (
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        elif deadline is not None and now - started >= deadline:
            ended = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            for pod in active:
                self._delete_pod(pod)
            failed += len(active)
        if ended is None:
            wanted = min(spec.get("parallelism", 1), spec.get("completions", 1) - succeeded)
            for _ in range(wanted - len(active)):
                active.append(self._create_pod(job, f"{meta['name']}-{rand_suffix()}", {}, now))
        else:
            active = []
            kind, reason, message = ended
            target = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            status["conditions"] = _conditions(
                status.get("conditions"),
                [(target, True, reason, message), (kind, True, reason, message)],
            )
            if kind == "Complete":
                status["completionTime"] = now_rfc3339()
        status.update(active=len(active), succeeded=succeeded, failed=failed, terminating=0)
        status["ready"] = sum(node.is_ready(p) for p in active)
        status["uncountedTerminatedPods"] = {}
        self.store.set_status(job, _drop_zeros(status, "active", "succeeded", "failed"))
