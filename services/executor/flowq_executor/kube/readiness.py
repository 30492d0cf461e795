"""Is an object ready, and if not, why? Causes come from the pods' own conditions.

Ready means: Deployment, StatefulSet and DaemonSet rolled out (the controller saw the
latest generation and every replica is updated and available), Job complete, PVC bound,
anything else present. A cause that does not fix itself by waiting (an image that cannot be
pulled, a container in a crash loop, a bad container config, a Job that failed, a
Deployment past its progress deadline) fails the step at once, naming it. Everything else
is "still waiting", with what it waits for, which a step timeout reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowq_executor.kube.client import KubeClient

#: Container waiting reasons that mean "this will not start by itself".
FATAL_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    waiting_for: str = ""  # what it still waits for
    failure: str = ""  # a cause that will not go away: fail now


def _condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def pod_causes(pods: list[dict]) -> tuple[str, str]:
    """(fatal cause, other reason it waits) found in `pods`; empty strings when none."""
    waiting = ""
    for pod in pods:
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue  # an old pod on its way out says nothing about the new ones
        name = meta.get("name", "?")
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            state = cs.get("state") or {}
            wait = state.get("waiting") or {}
            reason = wait.get("reason", "")
            if reason in FATAL_WAITING_REASONS:
                detail = wait.get("message") or ""
                last = ((cs.get("lastState") or {}).get("terminated")) or {}
                if reason == "CrashLoopBackOff" and last:
                    detail = f"last exit code {last.get('exitCode')} ({last.get('reason', '')})"
                return f"pod {name}: container {cs.get('name')}: {reason}: {detail}".rstrip(
                    ": "
                ), ""
            if reason and not waiting:
                waiting = f"pod {name}: container {cs.get('name')} {reason}"
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and not waiting:
            waiting = f"pod {name} cannot be scheduled ({scheduled.get('reason')}): {scheduled.get('message', '')}"
    return "", waiting


def _rolled_out(kind: str, obj: dict) -> tuple[bool, str]:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if st.get("observedGeneration", 0) < generation:
        return False, "the controller has not seen the latest spec yet"
    if kind == "DaemonSet":
        want = st.get("desiredNumberScheduled", 0)
        updated, available = st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0)
        ok = updated >= want and available >= want
        return ok, f"{available}/{want} pods available, {updated} updated"
    want = spec.get("replicas", 1)
    updated = st.get("updatedReplicas", 0)
    ready = st.get("availableReplicas" if kind == "Deployment" else "readyReplicas", 0)
    ok = updated >= want and ready >= want and st.get("replicas", 0) <= want
    if kind == "StatefulSet" and st.get("updateRevision"):
        ok = ok and st.get("currentRevision") == st.get("updateRevision")
    return ok, f"{ready}/{want} replicas ready, {updated} updated"


async def check(
    kube: KubeClient, api_version: str, kind: str, name: str, namespace: str | None
) -> Readiness:
    obj = await kube.get(api_version, kind, name, namespace)
    if obj is None:
        return Readiness(False, failure=f"{kind} {name} disappeared (deleted by someone else?)")
    st = obj.get("status") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        progressing = _condition(obj, "Progressing")
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return Readiness(
                False,
                failure=f"{kind} {name}: {progressing.get('message', 'progress deadline exceeded')}",
            )
        ok, progress = _rolled_out(kind, obj)
        if ok:
            return Readiness(True)
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = (
            await kube.list(
                "v1", "Pod", namespace, ",".join(f"{k}={v}" for k, v in selector.items())
            )
            if selector
            else []
        )
        fatal, waiting = pod_causes(pods)
        if fatal:
            return Readiness(False, failure=fatal)
        return Readiness(
            False, waiting_for=f"{kind} {name}: {progress}" + (f"; {waiting}" if waiting else "")
        )
    if kind == "Job":
        return await job_state(kube, obj, namespace)
    if kind == "PersistentVolumeClaim":
        phase = st.get("phase", "Pending")
        return Readiness(phase == "Bound", waiting_for=f"PersistentVolumeClaim {name} is {phase}")
    return Readiness(True)


async def job_state(kube: KubeClient, job: dict, namespace: str | None) -> Readiness:
    """A Job is ready when complete; failed (with the pod's reason) when it failed."""
    name = job["metadata"]["name"]
    complete = _condition(job, "Complete")
    if complete and complete.get("status") == "True":
        return Readiness(True)
    pods = await kube.list("v1", "Pod", namespace, f"job-name={name}")
    failed = _condition(job, "Failed")
    if failed and failed.get("status") == "True":
        return Readiness(False, failure=f"Job {name} failed: {failure_of(failed, pods)}")
    fatal, waiting = pod_causes(pods)
    if fatal:
        return Readiness(False, failure=f"Job {name} cannot run: {fatal}")
    active = (job.get("status") or {}).get("active", 0)
    return Readiness(False, waiting_for=f"Job {name}: {waiting or f'{active} pod(s) running'}")


def failure_of(condition: dict, pods: list[dict]) -> str:
    """The most useful reason a Job failed: a container's exit code, else the condition."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term: dict[str, Any] = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                why = f" ({term['reason']})" if term.get("reason") else ""
                return f"container {cs.get('name')} exited with code {term['exitCode']}{why}"
    reason, message = condition.get("reason", ""), condition.get("message", "")
    return f"{reason}: {message}".strip(": ") or "failed"
