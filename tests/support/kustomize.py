"""`kustomize build` for flowq's own overlays: `kubectl kustomize` when kubectl is installed,
else this small builder of the same features our kustomizations use (resources, namespace,
labels without selectors, images, strategic-merge patches of maps, replicas). When kubectl is
present the tests check that both give the same objects, so the fallback cannot drift.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


def kubectl_build(directory: Path) -> list[dict] | None:
    """`kubectl kustomize DIR`, or None when kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def python_build(directory: Path) -> list[dict]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects += python_build(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = _find(objects, change["kind"], change["metadata"]["name"])
            _merge(target, change)
    for replica in spec.get("replicas", []):
        _find(objects, "Deployment", replica["name"])["spec"]["replicas"] = replica["count"]
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                current = container.get("image", "")
                if current == image["name"] or current.startswith(image["name"] + ":"):
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for label in spec.get("labels", []):
        assert not label.get("includeSelectors"), "only labels without selectors are built here"
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = spec["namespace"]
    return objects


def build(directory: Path) -> list[dict]:
    return kubectl_build(directory) or python_build(directory)


def _find(objects: list[dict], kind: str, name: str) -> dict:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"{kind} {name} is patched but not among the resources")


def _merge(target: dict, change: dict[str, Any]) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec) if obj["kind"] != "Pod" else spec
    return [*pod.get("initContainers", []), *pod.get("containers", [])]
