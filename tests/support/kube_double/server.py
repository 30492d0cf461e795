"""`KubeApiDouble`: the Kubernetes API test double's HTTP server (Starlette under uvicorn in
a thread) and its controller tick thread."""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flowq.netutil import LOCALHOST, free_port

from . import resources
from .controllers import Simulator
from .pods import pod_log
from .resources import ResourceType
from .store import KubeStatusError, Store, bad_request, failure_status

log = logging.getLogger("tests.kube_double")
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_RETURNS_DELETED_OBJECT = ("Pod", "Service", "PersistentVolumeClaim", "Namespace")


class KubeApiDoubleError(RuntimeError):
    """The Kubernetes API test double could not start."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str


def _status_response(error: KubeStatusError) -> JSONResponse:
    return JSONResponse(error.status(), status_code=error.code)


def _parse_body(raw: bytes, content_type: str) -> dict:
    if not raw.strip():
        return {}
    try:
        body = yaml.safe_load(raw) if "yaml" in content_type else json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"the body of the request could not be decoded: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be an object")
    return body


class KubeApiDouble:
    """An in-memory Kubernetes API server for tests (a test double, not a cluster).

    `ready_after`: seconds from a pod's creation to its containers starting (and a claim
    binding); `tick_interval`: seconds between controller ticks.
    """

    def __init__(
        self, *, ready_after: float = 0.5, tick_interval: float = 0.1, host: str = LOCALHOST
    ) -> None:
        self.ready_after, self.tick_interval, self.host = ready_after, tick_interval, host
        self.port = 0
        self.store = Store()
        self.errors: list[str] = []  # internal errors (HTTP handler or tick); should stay empty
        self._simulator = Simulator(self.store, ready_after)
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KubeApiDouble:
        if self._server is not None:
            return self
        self._socket = self._bind()
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            host=self.host,
            port=self.port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        http = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="kube-api-test-double-http",
            daemon=True,
        )
        ticker = threading.Thread(target=self._tick_loop, name="kube-api-test-double-tick")
        ticker.daemon = True
        self._threads = [http, ticker]
        http.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not http.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise KubeApiDoubleError(f"Kubernetes API test double did not start on {self.url}")
            time.sleep(0.01)
        ticker.start()
        log.info("Kubernetes API test double listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stops both threads and frees the port. Idempotent, safe before `start()`."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            log.info("Kubernetes API test double on %s stopped", self.url)

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        problem: OSError | None = None
        for _ in range(5):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, free_port(self.host)))
                sock.listen(128)
                return sock
            except OSError as exc:
                sock.close()
                problem = exc
        raise KubeApiDoubleError(f"Kubernetes API test double: no port to listen on: {problem}")

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.tick_interval):
            try:
                self._simulator.tick()
            except Exception as exc:  # logged, recorded, and the loop goes on
                log.exception("Kubernetes API test double: controller tick failed")
                self.errors.append(f"tick: {exc!r}")

    # -- inspection (no HTTP) --------------------------------------------------------------

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server: one cluster, one user without credentials."""
        name = "kube-api-test-double"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Copies of the stored objects of one type (`"pods"`, `"deployments"`, ...)."""
        rt = resources.BY_PLURAL[plural]
        return self.store.list(rt, namespace if rt.namespaced else None)["items"]

    def requests(self) -> list[RecordedRequest]:
        """Every request served so far (discovery included), oldest first."""
        return list(self._requests)

    # -- HTTP ------------------------------------------------------------------------------

    def _app(self) -> ASGIApp:
        async def version(request: Request) -> Response:
            return JSONResponse(resources.SERVER_VERSION)

        async def api(request: Request) -> Response:
            return JSONResponse(resources.api_versions(f"{self.host}:{self.port}"))

        async def apis(request: Request) -> Response:
            return JSONResponse(resources.api_group_list())

        async def group_version(request: Request) -> Response:
            group = request.path_params.get("group", "")
            version = request.path_params.get("version", "v1")
            found = resources.api_resource_list(group, version)
            if found is None:
                raise HTTPException(404)
            return JSONResponse(found)

        async def not_found(request: Request, exc: Exception) -> Response:
            code = getattr(exc, "status_code", 404)
            reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(code, "BadRequest")
            message = "the server could not find the requested resource"
            return JSONResponse(failure_status(code, reason, message), status_code=code)

        routes = [
            Route("/version", version),
            Route("/api", api),
            Route("/apis", apis),
            Route("/api/v1", group_version),
            Route("/apis/{group}/{version}", group_version),
            Route("/api/v1/{rest:path}", self._endpoint, methods=_ALL_METHODS),
            Route("/apis/{group}/{version}/{rest:path}", self._endpoint, methods=_ALL_METHODS),
        ]
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                request = Request(scope)
                content_type = request.headers.get("content-type", "").split(";")[0].strip()
                self._requests.append(
                    RecordedRequest(
                        request.method, request.url.path, dict(request.query_params), content_type
                    )
                )
            await app(scope, receive, send)

        return recording

    async def _endpoint(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        query = dict(request.query_params)
        try:
            raw = await request.body()
            return self._serve(request, query, content_type, raw)
        except KubeStatusError as exc:
            return _status_response(exc)
        except Exception as exc:
            log.exception("Kubernetes API test double: %s %s failed", request.method, request.url)
            self.errors.append(f"{request.method} {request.url.path}: {exc!r}")
            message = f"internal error in the Kubernetes API test double: {exc!r}"
            return JSONResponse(failure_status(500, "InternalError", message), status_code=500)

    def _serve(self, request: Request, query: dict, content_type: str, raw: bytes) -> Response:
        group = request.path_params.get("group", "")
        version = request.path_params.get("version", "v1")
        rt, namespace, name, sub = _route(group, version, request.path_params["rest"])
        method = request.method
        verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch"}.get(
            method, "delete" if method == "DELETE" else "update"
        )
        if query.get("watch") in ("true", "1"):
            verb = "watch"
        if verb not in resources.VERBS or (rt.plural == "events" and verb not in ("get", "list")):
            raise KubeStatusError(
                405,
                "MethodNotAllowed",
                f"{verb} {rt.plural} is not supported by the Kubernetes API test double",
            )
        if namespace is None and rt.namespaced and (name or verb != "list"):
            raise KubeStatusError(
                404, "NotFound", "the server could not find the requested resource"
            )
        ns = namespace or ""
        dry_run = "dryRun" in query
        if sub == "log" and rt.kind == "Pod" and verb == "get":
            pod = self.store.get(rt, ns, name)
            tail = query.get("tailLines")
            text = pod_log(pod, query.get("container"), int(tail) if tail else None)
            return PlainTextResponse(text)
        if sub not in (None, "status") or (sub == "status" and verb != "get"):
            raise KubeStatusError(
                405,
                "MethodNotAllowed",
                f"{rt.plural}/{sub} {verb} is not supported by the Kubernetes API test double",
            )
        if verb == "list":
            listed = self.store.list(
                rt, namespace, query.get("labelSelector"), query.get("fieldSelector")
            )
            return JSONResponse(listed)
        if verb == "get":
            return JSONResponse(self.store.get(rt, ns, name))
        body = _parse_body(raw, content_type)
        if verb == "create":
            return JSONResponse(self.store.create(rt, ns, body, dry_run), status_code=201)
        if verb == "patch":
            return self._patch(rt, ns, name, body, query, content_type, dry_run)
        return self._delete(rt, ns, name, body, query, dry_run)

    def _patch(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        body: dict,
        query: dict,
        content_type: str,
        dry_run: bool,
    ) -> Response:
        if content_type == "application/apply-patch+yaml":
            if not query.get("fieldManager"):
                raise bad_request(
                    "PATCH with application/apply-patch+yaml requires a fieldManager query parameter"
                )
            with self.store.lock:
                existed = self.store.find(rt.plural, ns, name) is not None
                applied = self.store.apply(rt, ns, name, body, dry_run)
            return JSONResponse(applied, status_code=200 if existed else 201)
        if content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            return JSONResponse(self.store.merge_patch(rt, ns, name, body, dry_run))
        raise KubeStatusError(
            415,
            "UnsupportedMediaType",
            f"the Kubernetes API test double does not support PATCH with {content_type!r}",
        )

    def _delete(
        self, rt: ResourceType, ns: str, name: str, body: dict, query: dict, dry_run: bool
    ) -> Response:
        policy = query.get("propagationPolicy") or body.get("propagationPolicy")
        orphan = query.get("orphanDependents", body.get("orphanDependents"))
        if policy is None and orphan is not None:
            policy = "Orphan" if str(orphan).lower() == "true" else "Background"
        dry_run = dry_run or bool(body.get("dryRun"))
        deleted = self.store.delete(rt, ns, name, policy, dry_run)
        if rt.kind in _RETURNS_DELETED_OBJECT:
            return JSONResponse(deleted)
        details = {
            "name": name,
            "group": rt.group,
            "kind": rt.plural,
            "uid": deleted["metadata"]["uid"],
        }
        success = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }
        return JSONResponse(success)


def _route(
    group: str, version: str, rest: str
) -> tuple[ResourceType, str | None, str | None, str | None]:
    """(type, namespace, name, subresource) of a resource path below /api/v1 or /apis/g/v."""
    parts = [p for p in rest.split("/") if p]
    namespaced = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespaced = resources.find(group, version, parts[2])
    if namespaced is not None and namespaced.namespaced and len(parts) <= 5:
        rest_parts = parts[3:] + [None, None]
        return namespaced, parts[1], rest_parts[0], rest_parts[1]
    rt = resources.find(group, version, parts[0]) if parts else None
    if rt is None or len(parts) > 3 or (rt.namespaced and len(parts) > 1):
        raise KubeStatusError(404, "NotFound", "the server could not find the requested resource")
    rest_parts = parts[1:] + [None, None]
    return rt, None, rest_parts[0], rest_parts[1]
