"""One way to start and stop every flowq service.

`run(service)` owns signals, the gRPC server (health with `""` and the service's own name,
reflection, the error interceptor), the HTTP server (metrics; the apiserver's REST gateway),
readiness checks, supervised loops and the ordered graceful stop:

    SIGTERM/SIGINT -> health NOT_SERVING -> stop taking work (gRPC and HTTP stop accepting,
    the service drains) -> in-flight work finishes within FLOWQ_SHUTDOWN_GRACE_SECONDS ->
    loops cancelled -> pools closed -> exit 0.   A second signal exits at once with code 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from flowq.auth import AuthInterceptor, TokenChecker
from flowq.config import Settings
from flowq.errors import ConfigError
from flowq.grpcutil import SERVER_OPTIONS, ErrorInterceptor
from flowq.log import configure_logging
from flowq.metrics import metrics_route
from flowq.supervise import Supervisor, beat

log = logging.getLogger(__name__)

READINESS_INTERVAL_SECONDS = 2.0
HEADER_TIMEOUT_SECONDS = 5.0
NOT_READY_INTERVAL_SECONDS = 0.25  # check often while not ready, so readiness comes back fast
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Service(ABC):
    """What a role plugs into the runner. Subclasses hold wiring, not business rules."""

    #: The health service name that means "ready to take work", e.g. flowq.v1.WorkflowService.
    health_name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: False once a background loop that must live has ended (gRPC liveness NOT_SERVING).
        self.live = True

    @abstractmethod
    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register servicers; return their full service names (for reflection)."""

    @property
    def http_port(self) -> int:
        return self.settings.metrics_port

    def http_app(self, grpc_target: str) -> ASGIApp:
        """The HTTP app; by default only /metrics."""
        return Starlette(routes=[metrics_route(self.settings)])

    async def start(self, loops: Supervisor) -> None:  # noqa: B027 - optional hook
        """Open pools and start background loops (through `loops`)."""

    async def check_ready(self) -> None:  # noqa: B027 - optional hook
        """Raise when a dependency (database, Redis) does not answer."""

    async def drain(self, grace_seconds: float) -> None:  # noqa: B027 - optional hook
        """Stop taking new work and finish or hand back in-flight work within the grace."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close pools and connections. Idempotent and safe before start()."""


class _H11WithHeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol plus a header read timeout (uvicorn has none): a client that has
    not sent a whole request head within HEADER_TIMEOUT_SECONDS of connecting, or of its last
    response, is disconnected, so slow or stalled clients cannot hold connections open."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head arrived
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Runner:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.health = health.aio.HealthServicer()
        self.loops = Supervisor(self.settings.backoff_max_seconds)
        self._stop = asyncio.Event()
        self._signals = 0
        self._ready: bool | None = None
        self._socket_dir = ""

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
            self._stop.set()
        else:
            log.error(
                "second signal during drain; exiting now",
                extra={"signal": signal.Signals(signum).name},
            )
            logging.shutdown()
            os._exit(130)

    async def _readiness(self) -> None:
        """Readiness (the service's own name) follows its dependencies; liveness (`""`) turns
        NOT_SERVING if a loop that must live has ended, so the orchestrator restarts us."""
        alive = True
        while True:
            beat()
            if alive and not self.loops.alive():
                alive = self.service.live = False
                log.error("a background loop ended; liveness NOT_SERVING")
                await self.health.set("", NOT_SERVING)
            wedged = self.loops.wedged()
            if alive and wedged:
                alive = self.service.live = False
                log.error(
                    "a background loop makes no progress; liveness NOT_SERVING",
                    extra={"loops": wedged},
                )
                await self.health.set("", NOT_SERVING)
            try:
                await asyncio.wait_for(self.service.check_ready(), timeout=5)
                ready, problem = True, ""
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                ready, problem = False, f"{type(exc).__name__}: {exc}"
            ready = ready and alive
            if ready != self._ready:
                if ready:
                    log.info("ready", extra={"health_service": self.service.health_name})
                else:
                    log.warning(
                        "not ready",
                        extra={"health_service": self.service.health_name, "error": problem},
                    )
                self._ready = ready
                await self.health.set(self.service.health_name, SERVING if ready else NOT_SERVING)
            await asyncio.sleep(READINESS_INTERVAL_SECONDS if ready else NOT_READY_INTERVAL_SECONDS)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

        checker = TokenChecker(self.settings.accepted_tokens)
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor(), AuthInterceptor(checker)], options=SERVER_OPTIONS
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = list(self.service.add_to_server(server))
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        tls = self.settings.tls
        address = f"0.0.0.0:{self.settings.grpc_port}"
        try:
            if tls.serving:
                grpc_port = server.add_secure_port(address, tls.server_credentials())
            else:
                grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on port {self.settings.grpc_port} ({exc}); is another process using it? "
                "Stop it or set FLOWQ_GRPC_PORT"
            ) from None
        # The REST gateway reaches this server through a private Unix socket (a directory only
        # this user can enter): no TLS to terminate twice, no client certificate to present.
        self._socket_dir = tempfile.mkdtemp(prefix="flowq-grpc-")
        loopback = f"unix:{self._socket_dir}/grpc.sock"
        server.add_insecure_port(loopback)
        try:
            http_socket = _listen(self.service.http_port)
        except ConfigError:
            shutil.rmtree(self._socket_dir, ignore_errors=True)  # no stop follows a failed start
            raise
        await self.health.set("", NOT_SERVING)
        await self.health.set(self.service.health_name, NOT_SERVING)

        http = _QuietUvicorn(
            uvicorn.Config(
                self.service.http_app(loopback),
                host="0.0.0.0",
                port=self.service.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
                http=_H11WithHeaderTimeout,
                timeout_keep_alive=5,
                timeout_graceful_shutdown=int(self.settings.shutdown_grace_seconds),
                **tls.uvicorn_options(),
            )
        )
        http_task: asyncio.Task[None] | None = None
        try:
            await self.service.start(self.loops)
            await server.start()
            http_task = asyncio.create_task(http.serve(sockets=[http_socket]), name="http")
            while not http.started:
                if http_task.done():
                    http_task.result()
                    raise ConfigError(
                        f"the HTTP server on port {self.service.http_port} did not start"
                    )
                await asyncio.sleep(0.02)
            await self.health.set("", SERVING)
            self.loops.spawn("readiness", self._readiness)
            log.info(
                "started",
                extra={
                    "grpc_port": grpc_port,
                    "http_port": self.service.http_port,
                    "settings": self.settings.public(),
                },
            )
            await self._stop.wait()
        finally:
            await self._shutdown(server, http, http_task)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return 0

    def request_stop(self) -> None:
        """Start the graceful stop, as a first SIGTERM would (for embedding and tests)."""
        self._stop.set()

    async def _shutdown(
        self, server: grpc.aio.Server, http: uvicorn.Server, http_task: asyncio.Task | None
    ) -> None:
        started = time.monotonic()
        grace = self.settings.shutdown_grace_seconds
        log.info("drain started", extra={"grace_seconds": grace})
        await self.loops.stop("readiness")
        await self.health.enter_graceful_shutdown()
        http.should_exit = True
        await asyncio.gather(
            server.stop(grace),
            self.service.drain(grace),
            http_task if http_task is not None else asyncio.sleep(0),
            return_exceptions=True,
        )
        await self.loops.stop()
        await self.service.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        log.info("drain finished", extra={"drain_seconds": round(time.monotonic() - started, 3)})


def _listen(port: int) -> socket.socket:
    """Bind the HTTP port here, so a port in use is a clear error and not a server crash."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for HTTP on port {port} ({exc.strerror}); is another process using it? "
            "Stop it or change the port (FLOWQ_HTTP_PORT on the apiserver, FLOWQ_METRICS_PORT on the others)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def main(role: str, factory: Callable[[Settings], Service]) -> None:
    """Entry point of a service process: settings, logging, run, exit code."""
    try:
        settings = Settings.from_env(role)
    except ConfigError as exc:
        print(f"flowq-{role}: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(f"flowq-{role}", settings.instance_id, settings.log_level)
    service = factory(settings)
    try:
        code = asyncio.run(Runner(service).run())
    except ConfigError as exc:
        log.error("cannot start: %s", exc.message)
        code = 2
    logging.shutdown()
    sys.exit(code)
