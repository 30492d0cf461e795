"""Wiring of the dispatcher: the stream consumer, the claimer, the sweeps and QueueService."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import grpc
from prometheus_client import Counter, Gauge, Histogram

from flowq import stream, tls
from flowq.auth import bearer_metadata
from flowq.config import Settings
from flowq.db import Database
from flowq.errors import FlowqError, ResourceExhaustedError, UnavailableError
from flowq.grpcutil import CHANNEL_OPTIONS
from flowq.keys import Keys
from flowq.lifecycle import Service
from flowq.supervise import Supervisor, beat
from flowq.v1 import (
    executor_service_pb2,
    executor_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
)
from flowq_dispatcher import deadletters, sweep
from flowq_dispatcher.consumer import Consumer
from flowq_dispatcher.handling import ExecutorAnswer
from flowq_dispatcher.servicer import QueueServicer

log = logging.getLogger(__name__)

SERVICE = queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"]
EXECUTOR_CALL_TIMEOUT_SECONDS = 10.0
CLEAN_CALL_TIMEOUT_SECONDS = 120.0
GAUGES_INTERVAL_SECONDS = 5.0
HOUSEKEEPING_INTERVAL_SECONDS = 60.0
DEPARTED_AFTER_SECONDS = 3600.0  # expired leases and idle consumers older than this are removed

STREAM_LENGTH = Gauge(
    "flowq_dispatch_stream_length", "Entries in the dispatch stream (waiting or pending)."
)
BACKLOG = Gauge(
    "flowq_dispatch_backlog", "Entries never delivered to a dispatcher (consumer-group lag)."
)
PENDING = Gauge("flowq_dispatch_pending", "Entries delivered and not yet acknowledged.")
OLDEST_PENDING = Gauge(
    "flowq_dispatch_oldest_pending_age_seconds", "Age of the oldest unacknowledged entry."
)
DEAD_LETTERS = Gauge("flowq_dispatch_dead_letters", "Entries in the dead-letter stream.")

EXECUTOR_CALLS = Counter(
    "flowq_dispatcher_executor_calls_total", "RunTask calls to executors, by status code.", ["code"]
)
EXECUTOR_CALL_SECONDS = Histogram(
    "flowq_dispatcher_executor_call_seconds",
    "Time an executor took to answer RunTask.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class ExecutorFailedError(FlowqError):
    """The executor failed on this task (not busy, not unreachable): counts toward dead-lettering."""


class Dispatcher(Service):
    health_name = SERVICE.full_name

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.keys = Keys(settings.key_prefix)
        self.db = Database(settings.database_url)
        self.redis = stream.connect(settings.redis_url)
        self.channel: grpc.aio.Channel | None = None
        self.consumer = Consumer(settings, self.db, self.redis, self.keys, self._run_task)
        self.loops: Supervisor | None = None
        # What executors see from us: FLOWQ_INTERNAL_TOKEN, or else the first API token.
        self.metadata = bearer_metadata(settings.outgoing_token)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        queue_service_pb2_grpc.add_QueueServiceServicer_to_server(
            QueueServicer(self.redis, self.keys, self.db), server
        )
        return [SERVICE.full_name]

    async def start(self, loops: Supervisor) -> None:
        self.channel = tls.aio_channel(
            self.settings.executor_target, self.settings.tls, CHANNEL_OPTIONS
        )
        self.executor = executor_service_pb2_grpc.ExecutorServiceStub(self.channel)
        self.loops = loops
        loops.spawn("read", self.consumer.read_loop)
        loops.spawn("claim", self.consumer.claim_loop)
        loops.spawn("sweep", self._sweep_loop)
        loops.spawn("queue-gauges", self._gauges_loop)
        loops.spawn("clean", self._clean_loop, stall_after=10 * CLEAN_CALL_TIMEOUT_SECONDS)

    async def _run_task(self, task_id: str, attempt: int) -> ExecutorAnswer:
        started = time.perf_counter()
        try:
            reply = await self.executor.RunTask(
                executor_service_pb2.RunTaskRequest(task_id=task_id, attempt=attempt),
                timeout=EXECUTOR_CALL_TIMEOUT_SECONDS,
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            EXECUTOR_CALLS.labels(code=code.name).inc()
            EXECUTOR_CALL_SECONDS.observe(time.perf_counter() - started)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhaustedError(f"executor busy: {exc.details()}") from None
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ):
                raise UnavailableError(f"executor {code.name}: {exc.details()}") from None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                # Our configuration, not the task: never counts toward dead-lettering.
                raise UnavailableError(
                    f"executor {code.name}: it refuses this dispatcher's token; give dispatchers "
                    "and executors the same FLOWQ_INTERNAL_TOKEN"
                ) from None
            raise ExecutorFailedError(f"executor {code.name}: {exc.details()}") from None
        EXECUTOR_CALLS.labels(code="OK").inc()
        EXECUTOR_CALL_SECONDS.observe(time.perf_counter() - started)
        return ExecutorAnswer(reply.accepted, reply.reason)

    async def _clean_task(self, task_id: str) -> list[str]:
        reply = await self.executor.CleanTask(
            executor_service_pb2.CleanTaskRequest(task_id=task_id),
            timeout=CLEAN_CALL_TIMEOUT_SECONDS,
            metadata=self.metadata,
        )
        return list(reply.deleted)

    async def _sweep_loop(self) -> None:
        last_housekeeping = 0.0
        while not self.consumer.stopping.is_set():
            beat()
            # Each part on its own: Redis down must not stop the SQL-only parts, and the reverse.
            parts = [
                ("timeouts", lambda: sweep.fail_overdue(self.db, self.settings.lease_ttl_seconds)),
                (
                    "orphans",
                    lambda: sweep.recover_orphans(
                        self.db,
                        self.redis,
                        self.keys,
                        self.settings.lease_ttl_seconds,
                        self.settings.max_task_attempts,
                    ),
                ),
                (
                    "requeue",
                    lambda: sweep.requeue_stale(
                        self.db, self.redis, self.keys, self.settings.requeue_after_seconds
                    ),
                ),
                ("unpark", lambda: sweep.unpark_lost(self.db, self.redis, self.keys)),
            ]
            if time.monotonic() - last_housekeeping > HOUSEKEEPING_INTERVAL_SECONDS:
                last_housekeeping = time.monotonic()
                parts.append(
                    (
                        "housekeeping",
                        lambda: sweep.housekeeping(
                            self.db, self.redis, self.keys, DEPARTED_AFTER_SECONDS
                        ),
                    )
                )
            for part, run in parts:
                try:
                    await run()
                except Exception as exc:  # noqa: BLE001 - database or Redis blip: next round
                    log.warning(
                        "sweep failed; retrying next round", extra={"part": part, "error": str(exc)}
                    )
            await self._pause(self.settings.sweep_interval_seconds)

    async def _clean_loop(self) -> None:
        """Ask executors to clean up after tasks that ended without their owner. A loop of its
        own: a slow CleanTask must not hold up the recovery sweep."""
        retry: dict[str, tuple[float, int]] = {}
        while not self.consumer.stopping.is_set():
            beat()
            try:
                await sweep.clean_abandoned(self.db, self._clean_task, retry)
            except Exception as exc:  # noqa: BLE001 - database blip: next round
                log.warning("clean sweep failed; retrying next round", extra={"error": str(exc)})
            await self._pause(self.settings.sweep_interval_seconds)

    async def _gauges_loop(self) -> None:
        """Backlog, pending, oldest pending age and dead letters as gauges, every few seconds."""
        while not self.consumer.stopping.is_set():
            beat()
            try:
                stats = await deadletters.queue_stats(self.redis, self.keys)
                BACKLOG.set(stats.lag)
                PENDING.set(stats.pending)
                OLDEST_PENDING.set(stats.oldest_pending_age_ms / 1000)
                DEAD_LETTERS.set(stats.dead_letters)
                STREAM_LENGTH.set(stats.length)
            except Exception as exc:  # noqa: BLE001 - Redis down: the read loop reports it
                log.debug("queue gauges not updated", extra={"error": str(exc)})
            await self._pause(GAUGES_INTERVAL_SECONDS)

    async def _pause(self, seconds: float) -> None:
        """Sleep between rounds of a loop, waking at once when the drain starts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.consumer.stopping.wait(), seconds)

    async def check_ready(self) -> None:
        await self.db.ping()
        await self.redis.ping()

    async def drain(self, grace_seconds: float) -> None:
        # Stop reading; the batch in hand settles (each executor call has a deadline); whatever is
        # not acked stays pending and another dispatcher claims it.
        self.consumer.stopping.set()
        if self.loops is not None:
            await self.loops.wait("read", "claim", "sweep", timeout=grace_seconds)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        await self.redis.aclose()
        await self.db.close()
