"""An asyncio face on the official `kubernetes` client.

The client is blocking, so every call runs in a small thread pool of its own, with a
deadline. Objects are handled generically through `kubernetes.dynamic` (discovery tells it
any kind the cluster serves), written by server-side apply with the field manager `flowq`.
Configuration: FLOWQ_KUBECONFIG (or KUBECONFIG), else the in-cluster service account, else
~/.kube/config. Nothing is loaded until the first Kubernetes step runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic import exceptions as dyn_errors

from flowq.errors import FlowqError

log = logging.getLogger(__name__)

FIELD_MANAGER = "flowq"
POOL_THREADS = 8
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


class KubeError(FlowqError):
    """A Kubernetes call failed; the message says which and what to check."""


class KubeUnavailableError(KubeError):
    """The API server could not be reached or answered 5xx/429: worth another try."""

    retryable = True


class KubeClient:
    """One per executor. Thread-safe: the underlying ApiClient is shared by the pool."""

    def __init__(self, kubeconfig: str = "", default_namespace: str = "default") -> None:
        self.kubeconfig = kubeconfig
        self.default_namespace = default_namespace
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="kube")
        self._lock = threading.Lock()
        self._api: k8s.ApiClient | None = None
        self._dynamic: DynamicClient | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> tuple[k8s.ApiClient, DynamicClient]:
        with self._lock:
            if self._api is None:
                self._api = self._load_config()
            if self._dynamic is None:  # discovery: retried on the next call if it fails
                # Discovery is cached per API server in a file; keep it private to this process.
                cache = os.path.join(
                    tempfile.gettempdir(), f"flowq-kube-discovery-{os.getpid()}.json"
                )
                self._dynamic = DynamicClient(self._api, cache_file=cache)
            return self._api, self._dynamic

    def _load_config(self) -> k8s.ApiClient:
        """FLOWQ_KUBECONFIG, else the in-cluster service account, else ~/.kube/config."""
        try:
            if self.kubeconfig:
                return k8s_config.new_client_from_config(config_file=self.kubeconfig)
            try:
                k8s_config.load_incluster_config()
                return k8s.ApiClient()
            except ConfigException:  # not in a cluster
                return k8s_config.new_client_from_config()
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            where = self.kubeconfig or "in-cluster config or ~/.kube/config"
            raise KubeError(
                f"cannot load the Kubernetes configuration ({where}): {exc}; set "
                "FLOWQ_KUBECONFIG on the executor, or run it in a cluster"
            ) from None

    @property
    def server(self) -> str:
        return self._api.configuration.host if self._api is not None else "(not connected)"

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call in the pool and translate its failure into a KubeError."""

        def call() -> T:
            self._connect()
            return fn(*args, **kwargs)

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, call)
        try:
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread cannot be stopped: let the call in flight (bounded by its own
                # deadline) finish, so that what it created is there when clean() looks.
                with contextlib.suppress(Exception):
                    await future
                raise
        except dyn_errors.NotFoundError:
            raise
        except dyn_errors.ConflictError:
            raise
        except dyn_errors.DynamicApiError as exc:
            message = f"{what}: Kubernetes answered {exc.status}: {_summary(exc)}"
            if exc.status in (429, 500, 502, 503, 504):
                raise KubeUnavailableError(message) from None
            raise KubeError(message) from None
        except dyn_errors.ResourceNotFoundError as exc:
            raise KubeError(
                f"{what}: the cluster does not serve this kind ({exc}); check apiVersion and "
                "kind, or install the CRD first"
            ) from None
        except k8s.ApiException as exc:
            message = f"{what}: Kubernetes answered {exc.status}: {_summary(exc)}"
            if exc.status == 404:
                raise dyn_errors.NotFoundError(exc) from None
            if exc.status in (429, 500, 502, 503, 504):
                raise KubeUnavailableError(message) from None
            raise KubeError(message) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailableError(
                f"{what}: the Kubernetes API server at {self.server} did not answer ({exc}); "
                "check that it is reachable from the executor"
            ) from None

    def _resource(self, api_version: str, kind: str) -> Any:
        _api, dynamic = self._connect()
        return dynamic.resources.get(api_version=api_version, kind=kind)

    def _namespace(self, resource: Any, namespace: str | None) -> str | None:
        return (namespace or self.default_namespace) if resource.namespaced else None

    def _timeout(self) -> tuple[float, float]:
        return (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)

    # -- objects ------------------------------------------------------------------------------

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict | None:
        """The object, or None when it does not exist."""

        def get() -> dict:
            resource = self._resource(api_version, kind)
            return self._dynamic.get(  # type: ignore[union-attr]
                resource,
                name=name,
                namespace=self._namespace(resource, namespace),
                _request_timeout=self._timeout(),
            ).to_dict()

        try:
            return await self._call(f"read {kind} {name}", get)
        except dyn_errors.NotFoundError:
            return None

    async def apply(self, obj: dict, namespace: str | None) -> dict:
        """Server-side apply `obj` (created when absent) and return it as stored."""
        kind, name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?")

        def apply() -> dict:
            resource = self._resource(obj["apiVersion"], obj["kind"])
            return self._dynamic.server_side_apply(  # type: ignore[union-attr]
                resource,
                body=obj,
                namespace=self._namespace(resource, namespace),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=self._timeout(),
            ).to_dict()

        try:
            return await self._call(f"apply {kind} {name}", apply)
        except (dyn_errors.NotFoundError, dyn_errors.ConflictError) as exc:
            raise KubeError(f"apply {kind} {name}: {_summary(exc)}") from None

    async def create(self, obj: dict, namespace: str | None) -> dict:
        """Create `obj`; ConflictError when it exists already."""
        kind, name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?")

        def create() -> dict:
            resource = self._resource(obj["apiVersion"], obj["kind"])
            return self._dynamic.create(  # type: ignore[union-attr]
                resource,
                body=obj,
                namespace=self._namespace(resource, namespace),
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout(),
            ).to_dict()

        return await self._call(f"create {kind} {name}", create)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        """Delete the object and its dependents (in the background); False when it was gone."""

        def delete() -> None:
            resource = self._resource(api_version, kind)
            self._dynamic.delete(  # type: ignore[union-attr]
                resource,
                name=name,
                namespace=self._namespace(resource, namespace),
                propagation_policy="Background",
                _request_timeout=self._timeout(),
            )

        try:
            await self._call(f"delete {kind} {name}", delete)
        except dyn_errors.NotFoundError:
            return False
        return True

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str
    ) -> list[dict]:
        def list_() -> list[dict]:
            resource = self._resource(api_version, kind)
            found = self._dynamic.get(  # type: ignore[union-attr]
                resource,
                namespace=self._namespace(resource, namespace),
                label_selector=label_selector,
                _request_timeout=self._timeout(),
            ).to_dict()
            return list(found.get("items") or [])

        return await self._call(f"list {kind} ({label_selector})", list_)

    async def pod_log(self, namespace: str, pod: str, tail_lines: int = 100) -> str:
        """The last lines a pod printed; empty when it has none (yet)."""

        def read() -> str:
            api, _dynamic = self._connect()
            return k8s.CoreV1Api(api).read_namespaced_pod_log(
                pod, namespace, tail_lines=tail_lines, _request_timeout=self._timeout()
            )

        try:
            return await self._call(f"read the log of pod {pod}", read) or ""
        except (dyn_errors.NotFoundError, KubeError):
            return ""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._api is not None:
            self._api.close()


def _summary(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(getattr(exc, "reason", "") or exc)
