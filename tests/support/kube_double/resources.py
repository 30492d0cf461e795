"""The resource types the Kubernetes API test double serves, and its discovery documents."""

from __future__ import annotations

from dataclasses import dataclass

# What the double implements; a real server also lists update, watch and deletecollection.
VERBS = ["create", "delete", "get", "list", "patch"]
SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0+kube-api-test-double",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    plural: str
    kind: str
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    version: str = "v1"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def qualified(self) -> str:
        """`deployments.apps`, `pods`: how a real server names the type in its messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = [
    ResourceType("", "namespaces", "Namespace", ("status",), ("ns",), namespaced=False),
    ResourceType("", "pods", "Pod", ("status", "log"), ("po",)),
    ResourceType("", "services", "Service", ("status",), ("svc",)),
    ResourceType("", "configmaps", "ConfigMap", (), ("cm",)),
    ResourceType("", "secrets", "Secret"),
    ResourceType("", "persistentvolumeclaims", "PersistentVolumeClaim", ("status",), ("pvc",)),
    ResourceType("", "events", "Event", (), ("ev",)),
    ResourceType("apps", "deployments", "Deployment", ("status", "scale"), ("deploy",)),
    ResourceType("apps", "statefulsets", "StatefulSet", ("status", "scale"), ("sts",)),
    ResourceType("apps", "daemonsets", "DaemonSet", ("status",), ("ds",)),
    ResourceType("batch", "jobs", "Job", ("status",)),
]
BY_PLURAL = {rt.plural: rt for rt in RESOURCES}
GROUP_VERSIONS = sorted({rt.api_version for rt in RESOURCES})


def find(group: str, version: str, plural: str) -> ResourceType | None:
    rt = BY_PLURAL.get(plural)
    if rt is None or rt.group != group or rt.version != version:
        return None
    return rt


def api_versions(server_address: str) -> dict:
    """`GET /api`."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list() -> dict:
    """`GET /apis`: every named group (the core group is served under /api)."""
    groups = []
    for gv in GROUP_VERSIONS:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict | None:
    """`GET /api/v1`, `GET /apis/{group}/{version}`; None for an unknown group version."""
    resources = []
    for rt in RESOURCES:
        if rt.group != group or rt.version != version:
            continue
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(VERBS) if rt.plural != "events" else ["get", "list"],
                "shortNames": list(rt.short_names),
            }
        )
        for sub in rt.subresources:
            kind = {"log": "Pod", "scale": "Scale"}.get(sub, rt.kind)
            verbs = ["get"] if sub == "log" else ["get", "patch"]
            if sub == "scale":
                group_fields = {"group": "autoscaling", "version": "v1"}
            else:
                group_fields = {}
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                    **group_fields,
                }
            )
    if not resources:
        return None
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }
