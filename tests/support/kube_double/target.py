"""`KubeTarget`: the Kubernetes API a test talks to, the test double or a real cluster."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from kubernetes.dynamic import DynamicClient

from .server import KubeApiDouble


@dataclass
class KubeTarget:
    """`kubeconfig` to hand to the code under test, a fresh `namespace` in that cluster, and
    the `double` when it is the Kubernetes API test double (None on a real cluster)."""

    kubeconfig: Path
    namespace: str
    double: KubeApiDouble | None
    discovery_cache: Path  # where `dynamic()` keeps its discovery cache (not in /tmp)

    def api(self) -> kubernetes.client.ApiClient:
        """A fresh real client for assertions; close it (`with target.api() as api:`)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def dynamic(self, api: kubernetes.client.ApiClient) -> DynamicClient:
        """A DynamicClient over `api` whose discovery cache lives in the test's directory."""
        return DynamicClient(api, cache_file=str(self.discovery_cache))


def new_namespace() -> str:
    return f"flowq-test-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def kube_target(workdir: Path, kubeconfig: str | None = None) -> Iterator[KubeTarget]:
    """A KubeTarget with its namespace created. Without `kubeconfig`, a KubeApiDouble is
    started (and stopped after, failing if it recorded internal errors); with one, the
    namespace is created in that cluster and deleted after (Background, not awaited)."""
    namespace = new_namespace()
    cache = workdir / "kube-discovery-cache.json"
    if kubeconfig is None:
        with KubeApiDouble() as double:
            path = double.write_kubeconfig(workdir / "kubeconfig")
            target = KubeTarget(path, namespace, double, cache)
            _create_namespace(target)
            yield target
        if double.errors:
            raise AssertionError(f"Kubernetes API test double failed internally: {double.errors}")
        return
    target = KubeTarget(Path(kubeconfig), namespace, None, cache)
    _create_namespace(target)
    try:
        yield target
    finally:
        with target.api() as api:
            kubernetes.client.CoreV1Api(api).delete_namespace(
                namespace, propagation_policy="Background", _request_timeout=30
            )


def _create_namespace(target: KubeTarget) -> None:
    body = {"metadata": {"name": target.namespace, "labels": {"flowq.test/owned": "true"}}}
    with target.api() as api:
        kubernetes.client.CoreV1Api(api).create_namespace(body, _request_timeout=30)
