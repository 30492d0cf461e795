"""Wiring of the executor: SQL, Redis, the task runner and its heartbeat."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from flowq import stream
from flowq.config import Settings
from flowq.db import Database
from flowq.keys import Keys
from flowq.lifecycle import Service
from flowq.supervise import Supervisor
from flowq.v1 import executor_service_pb2, executor_service_pb2_grpc
from flowq_executor.runner import TaskRunner
from flowq_executor.servicer import ExecutorServicer

SERVICE = executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"]


class Executor(Service):
    health_name = SERVICE.full_name

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Claims and running tasks write concurrently: a pool that covers them avoids reconnecting.
        self.db = Database(settings.database_url, pool_size=30)
        self.redis = stream.connect(settings.redis_url)
        self.runner = TaskRunner(settings, self.db, self.redis, Keys(settings.key_prefix))

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorServicer(self.runner), server
        )
        return [SERVICE.full_name]

    async def start(self, loops: Supervisor) -> None:
        # RunTask answers UNAVAILABLE until the first renewal: no claim is ever without a lease.
        loops.spawn("heartbeat", self.runner.heartbeat_loop)
        loops.spawn("cancel-listener", self.runner.cancel_listener_loop)
        loops.spawn("task-changes", self.runner.changes.run)

    async def check_ready(self) -> None:
        await self.db.ping()
        if self.runner.draining:
            raise RuntimeError("draining")
        if not self.runner.lease_fresh():
            raise RuntimeError("the lease is not being renewed")

    async def drain(self, grace_seconds: float) -> None:
        await self.runner.drain(grace_seconds)

    async def stop(self) -> None:
        self.runner.kube.close()
        await self.redis.aclose()
        await self.db.close()
