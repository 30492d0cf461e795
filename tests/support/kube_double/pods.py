"""How the Kubernetes API test double's one pretend node runs a pod: its status and its log.

A pod's status is a pure function of its spec and its age, so every tick computes the same
dict until something changes (no resourceVersion churn). The rules, per container:

- the pod is unschedulable when its `nodeSelector` names a label the node lacks (the node
  has `kubernetes.io/os=linux`, `kubernetes.io/arch=<this machine>`, `kubernetes.io/hostname`);
- before `ready_after` seconds: `waiting: ContainerCreating`;
- image from a registry host ending in `.invalid`: `waiting: ImagePullBackOff`, for ever;
- restartPolicy Always and command/args containing `exit N` (N != 0): `waiting:
  CrashLoopBackOff`, restartCount 1, lastState.terminated.exitCode N;
- restartPolicy Always otherwise: running and ready for ever;
- restartPolicy Never/OnFailure: running for the sum of `sleep N` in command/args, then
  terminated with the first non-zero `exit N` (else 0).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import re
import shlex
from dataclasses import dataclass

from .store import KubeStatusError, bad_request

NODE_NAME = "kube-api-test-double-node"
NODE_LABELS = {
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine()
    ),
    "kubernetes.io/hostname": NODE_NAME,
}
UNSCHEDULABLE = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
_SHELLS = ("sh", "bash", "ash", "dash", "/bin/sh", "/bin/bash", "/bin/ash", "/bin/dash")


@dataclass(frozen=True)
class Script:
    """What the double reads from a container's command and args."""

    echoes: list[str]
    sleep: float
    exit_code: int


def read_script(container: dict) -> Script:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    text = " ".join(argv)
    exits = [int(n) for n in re.findall(r"\bexit\s+(\d+)", text)]
    sleeps = re.findall(r"\bsleep\s+(\d+(?:\.\d+)?|infinity)\b", text)
    echoes = []
    if len(argv) >= 3 and argv[0] in _SHELLS and re.fullmatch(r"-[a-z]*c", argv[1]):
        for part in re.split(r"\n|;|&&|\|\|", argv[2]):
            part = part.strip()
            if part == "echo" or part.startswith("echo "):
                try:
                    words = shlex.split(part[4:])
                except ValueError:
                    words = part[4:].split()
                while words and words[0] in ("-n", "-e"):
                    words.pop(0)
                echoes.append(" ".join(words))
    return Script(echoes, sum(float(s) for s in sleeps), next((n for n in exits if n), 0))


def image_fails(image: str) -> bool:
    """True for an image whose registry host cannot resolve (`registry.invalid/app:1`)."""
    host = image.split("/", 1)[0].split(":", 1)[0] if "/" in image else ""
    return host == "invalid" or host.endswith(".invalid")


def schedulable(pod_spec: dict) -> bool:
    selector = pod_spec.get("nodeSelector") or {}
    return all(NODE_LABELS.get(key) == value for key, value in selector.items())


def rfc3339(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _condition(kind: str, status: bool, at: float, reason: str = "", message: str = "") -> dict:
    cond = {"type": kind, "status": "True" if status else "False", "lastProbeTime": None}
    cond["lastTransitionTime"] = rfc3339(at)
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _container_status(pod: dict, container: dict, age: float, born: float, delay: float) -> dict:
    image, name = container.get("image", ""), container["name"]
    out = {"name": name, "image": image, "imageID": "", "restartCount": 0, "ready": False}
    out["started"] = False
    if age < delay:
        out["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return out
    if image_fails(image):
        message = f'Back-off pulling image "{image}"'
        out["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
        return out
    digest = hashlib.sha256(image.encode()).hexdigest()
    out["imageID"] = f"{image}@sha256:{digest}"
    out["containerID"] = (
        "containerd://" + hashlib.sha256(f"{pod['metadata']['uid']}/{name}".encode()).hexdigest()
    )
    script, started = read_script(container), rfc3339(born + delay)
    if pod["spec"].get("restartPolicy", "Always") == "Always":
        if script.exit_code:
            pod_name = pod["metadata"]["name"]
            message = f"back-off 10s restarting failed container={name} pod={pod_name}"
            out["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            out["restartCount"] = 1
            out["lastState"] = {
                "terminated": {
                    "exitCode": script.exit_code,
                    "reason": "Error",
                    "startedAt": started,
                }
            }
            out["lastState"]["terminated"]["finishedAt"] = started
            return out
        out.update(state={"running": {"startedAt": started}}, ready=True, started=True)
        return out
    if age < delay + script.sleep:
        out.update(state={"running": {"startedAt": started}}, ready=True, started=True)
        return out
    out["state"] = {
        "terminated": {
            "exitCode": script.exit_code,
            "reason": "Error" if script.exit_code else "Completed",
            "startedAt": started,
            "finishedAt": rfc3339(born + delay + script.sleep),
            "containerID": out["containerID"],
        }
    }
    return out


def pod_status(pod: dict, age: float, born: float, delay: float) -> dict:
    """The status the pretend node reports for `pod`, `age` seconds after it was first seen
    (at wall-clock time `born`), with containers starting `delay` seconds in."""
    spec = pod["spec"]
    base = {"qosClass": "BestEffort", "startTime": rfc3339(born)}
    if not schedulable(spec):
        unscheduled = _condition("PodScheduled", False, born, "Unschedulable", UNSCHEDULABLE)
        return {"phase": "Pending", "conditions": [unscheduled], "qosClass": "BestEffort"}
    statuses = [_container_status(pod, c, age, born, delay) for c in spec.get("containers", [])]
    states = [next(iter(s["state"])) for s in statuses]
    waiting = [s["state"]["waiting"]["reason"] for s in statuses if "waiting" in s["state"]]
    if any(r in ("ContainerCreating", "ImagePullBackOff") for r in waiting):
        phase = "Pending"
    elif statuses and all(state == "terminated" for state in states):
        codes = [s["state"]["terminated"]["exitCode"] for s in statuses]
        phase = "Succeeded" if not any(codes) else "Failed"
    else:
        phase = "Running"
    ready = bool(statuses) and all(s["ready"] for s in statuses)
    unready = " ".join(s["name"] for s in statuses if not s["ready"])
    reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
    message = "" if reason == "PodCompleted" else f"containers with unready status: [{unready}]"
    changed = born + delay if age >= delay else born
    conditions = [
        _condition("PodReadyToStartContainers", age >= delay, changed),
        _condition("Initialized", True, born),
        _condition("Ready", ready, changed, "" if ready else reason, "" if ready else message),
        _condition(
            "ContainersReady", ready, changed, "" if ready else reason, "" if ready else message
        ),
        _condition("PodScheduled", True, born),
    ]
    ip_seed = int(hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest(), 16)
    base.update(phase=phase, conditions=conditions, containerStatuses=statuses)
    base.update(hostIP="172.18.0.2", hostIPs=[{"ip": "172.18.0.2"}])
    if age >= delay:
        ip = f"10.244.{ip_seed % 250}.{ip_seed // 250 % 250 + 2}"
        base.update(podIP=ip, podIPs=[{"ip": ip}])
    return base


def pod_log(pod: dict, container: str | None, tail_lines: int | None) -> str:
    """What `GET .../pods/{name}/log` returns: each `echo` of an `sh -c` script once the
    container started, then `(Kubernetes API test double: exit code N)` once it exited."""
    containers = [c["name"] for c in pod["spec"].get("containers", [])]
    name = pod["metadata"]["name"]
    if container is None:
        if len(containers) != 1:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(containers)}]"
            )
        container = containers[0]
    if container not in containers:
        raise bad_request(f"container {container} is not valid for pod {name}")
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s["name"] == container), None)
    state = (status or {}).get("state") or {"waiting": {"reason": "ContainerCreating"}}
    waiting = state.get("waiting", {}).get("reason")
    if waiting and waiting != "CrashLoopBackOff":
        if waiting == "ImagePullBackOff":
            waiting = "trying and failing to pull image"
        raise KubeStatusError(
            400,
            "BadRequest",
            f'container "{container}" in pod "{name}" is waiting to start: {waiting}',
        )
    lines = list(read_script(spec).echoes)
    ended = state.get("terminated") or (status or {}).get("lastState", {}).get("terminated")
    if ended:
        lines.append(f"(Kubernetes API test double: exit code {ended['exitCode']})")
    if tail_lines is not None:
        lines = lines[-tail_lines:] if tail_lines > 0 else []
    return "".join(line + "\n" for line in lines)
