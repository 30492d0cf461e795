"""Kubernetes objects for the component step types, and the labels flowq puts on everything.

| type | objects |
|---|---|
| `webservice` | a Deployment, plus a Service when it has ports |
| `store` | a StatefulSet with a volume claim template, and its headless Service |
| `config` / `secret` | a ConfigMap / a Secret |

Every object carries `app.kubernetes.io/managed-by: flowq` and the app, workflow, task and
step it came from; pods carry only stable labels, so a new task does not restart them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APP = "flowq.dev/app"
LABEL_WORKFLOW = "flowq.dev/workflow"
LABEL_TASK = "flowq.dev/task"
LABEL_STEP = "flowq.dev/step"
#: Annotation naming the task and step that created an object (`<task>/<step>`). Clean deletes
#: only objects whose annotation names its own task and step; objects that existed before are
#: only ever updated.
CREATED_BY = "flowq.dev/created-by"

_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a valid prefix of it with a hash."""
    if _LABEL_VALUE_RE.match(text):
        return text
    clean = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:54].strip("-_.")
    return f"{clean}-{_short_hash(text)}" if clean else _short_hash(text)


def dns_name(text: str, limit: int = 63) -> str:
    """A DNS-1123 label from `text` (lowercase, digits, '-'), hashed when it had to change."""
    lowered = text.lower()
    clean = re.sub(r"[^a-z0-9-]", "-", lowered).strip("-")
    if clean == lowered and 0 < len(clean) <= limit:
        return clean
    return f"{clean[: limit - 9].strip('-')}-{_short_hash(text)}".lstrip("-")


def created_by(obj: dict | None) -> str | None:
    """The `<task>/<step>` that created `obj` (its CREATED_BY annotation), if any."""
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(CREATED_BY)


def owner_labels(app_id: str, workflow: str, task_id: str, step: str) -> dict[str, str]:
    return {
        MANAGED_BY: "flowq",
        LABEL_APP: label_value(app_id),
        LABEL_WORKFLOW: label_value(workflow),
        LABEL_TASK: label_value(task_id),
        LABEL_STEP: label_value(step),
    }


def _container(name: str, props: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": props["image"]}
    if props.get("command"):
        container["command"] = [str(c) for c in props["command"]]
    if props.get("args"):
        container["args"] = [str(a) for a in props["args"]]
    if props.get("env"):
        container["env"] = [{"name": str(k), "value": str(v)} for k, v in props["env"].items()]
    if props.get("ports"):
        container["ports"] = [{"containerPort": int(p)} for p in props["ports"]]
    return container


def _service(name: str, selector: dict[str, str], ports: list[int], headless: bool) -> dict:
    spec: dict[str, Any] = {"selector": selector}
    if ports:
        spec["ports"] = [{"name": f"port-{p}", "port": int(p), "targetPort": int(p)} for p in ports]
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def component_name(props: dict[str, Any], step: str) -> str:
    return props.get("name") or dns_name(step)


def render(step_type: str, props: dict[str, Any], app_id: str, step: str) -> list[dict]:
    """The objects of a component step, in the order they are applied."""
    name = component_name(props, step)
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": label_value(app_id)}
    if step_type == "config":
        data = {str(k): str(v) for k, v in props["data"].items()}
        return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}]
    if step_type == "secret":
        data = {str(k): str(v) for k, v in props["data"].items()}
        return [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "type": "Opaque",
                "stringData": data,
            }
        ]
    ports = [int(p) for p in props.get("ports") or []]
    pod = {
        "metadata": {"labels": dict(selector)},
        "spec": {"containers": [_container(name, props)]},
    }
    if step_type == "webservice":
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": int(props.get("replicas", 1)),
                "selector": {"matchLabels": selector},
                "template": pod,
            },
        }
        return (
            [deployment, _service(name, selector, ports, headless=False)] if ports else [deployment]
        )
    if step_type == "store":
        storage = props.get("storage") or {}
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(storage.get("size", "1Gi"))}},
        }
        if storage.get("storageClass"):
            claim["storageClassName"] = storage["storageClass"]
        pod["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "data", "mountPath": storage.get("mountPath", "/data")}
        ]
        statefulset = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name},
            "spec": {
                "serviceName": name,
                "replicas": int(props.get("replicas", 1)),
                "selector": {"matchLabels": selector},
                "template": pod,
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim}],
            },
        }
        # The headless Service first: the StatefulSet's pods get their DNS names from it.
        return [_service(name, selector, ports, headless=True), statefulset]
    raise ValueError(f"not a component step type: {step_type!r}")
