"""Wiring of the apiserver: SQL, Redis, the gRPC servicer and the REST gateway."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from flowq import stream
from flowq.changes import ChangeListener
from flowq.config import Settings
from flowq.db import Database
from flowq.grpcutil import CHANNEL_OPTIONS
from flowq.keys import Keys
from flowq.lifecycle import Service
from flowq.metrics import metrics_route
from flowq.rest import build_gateway
from flowq.supervise import Supervisor
from flowq.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from flowq_apiserver.servicer import WorkflowServicer

SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]


class ApiServer(Service):
    health_name = SERVICE.full_name

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.keys = Keys(settings.key_prefix)
        self.db = Database(settings.database_url)
        self.redis = stream.connect(settings.redis_url)
        self._channel: grpc.aio.Channel | None = None
        self.changes = ChangeListener(self.redis, self.keys)

    @property
    def http_port(self) -> int:
        return self.settings.http_port

    async def start(self, loops: Supervisor) -> None:
        loops.spawn("task-changes", self.changes.run)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        servicer = WorkflowServicer(
            self.db,
            self.redis,
            self.keys,
            self.changes,
            shell_allowed=self.settings.executor_allow_shell,
        )
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(servicer, server)
        return [SERVICE.full_name]

    def http_app(self, grpc_target: str) -> ASGIApp:
        # The gateway calls our own gRPC server over loopback: REST gets gRPC's validation and errors.
        self._channel = grpc.aio.insecure_channel(grpc_target, options=CHANNEL_OPTIONS)
        return build_gateway(
            self._channel,
            [SERVICE],
            extra_routes=[
                metrics_route(self.settings),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
            ],
        )

    async def _healthz(self, _request: Request) -> JSONResponse:
        if not self.live:
            return JSONResponse({"status": "NOT_SERVING"}, status_code=503)
        return JSONResponse({"status": "SERVING"})

    async def _readyz(self, _request: Request) -> JSONResponse:
        try:
            await self.check_ready()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return JSONResponse(
                {"status": "NOT_SERVING", "error": f"{type(exc).__name__}: {exc}"}, status_code=503
            )
        return JSONResponse({"status": "SERVING"})

    async def check_ready(self) -> None:
        # Only SQL: with Redis down, ExecWorkflow still stores tasks and the sweep enqueues them later.
        await self.db.ping()

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await self.redis.aclose()
        await self.db.close()
