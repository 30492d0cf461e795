"""The stream consumer: reads new entries, claims stale ones, and settles every entry:
ack, leave pending (retried after FLOWQ_CLAIM_IDLE_MS), or dead-letter with a reason.

Loops never exit on transient errors: they back off with full jitter and go on, including
when Redis comes back empty (the group is recreated).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError

from flowq import stream
from flowq.backoff import Backoff
from flowq.config import Settings
from flowq.db import Database
from flowq.keys import Keys
from flowq.log import log_context
from flowq_dispatcher.handling import Outcome, Result, RunTask, handle

log = logging.getLogger(__name__)

BATCH = 64
BLOCK_MS = 2000
MAX_IN_FLIGHT = 64

MESSAGES = Counter(
    "flowq_dispatcher_messages_total", "Stream entries handled, by outcome.", ["outcome"]
)
DEAD_LETTERED = Counter(
    "flowq_dispatcher_dead_lettered_total", "Entries moved to the dead-letter stream.", ["reason"]
)
LOOP_ERRORS = Counter(
    "flowq_dispatcher_loop_errors_total", "Read and claim failures (Redis errors).", ["loop"]
)
LAST_DISPATCH = Gauge(
    "flowq_dispatcher_last_dispatch_timestamp_seconds",
    "Unix time of the last task handed to an executor.",
)
ENQUEUE_TO_ACCEPTED = Histogram(
    "flowq_dispatcher_enqueue_to_accepted_seconds",
    "From XADD to an executor accepting the task.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class Consumer:
    def __init__(
        self, settings: Settings, db: Database, redis: aioredis.Redis, keys: Keys, run_task: RunTask
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.keys = keys
        self.run_task = run_task
        self.name = settings.instance_id
        self.stopping = asyncio.Event()
        self.redis_ok = False
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def read_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=self.settings.backoff_max_seconds)
        while not self.stopping.is_set():
            try:
                if not self.redis_ok:
                    await stream.ensure_group(self.redis, self.keys)
                entries = await stream.read(self.redis, self.keys, self.name, BATCH, BLOCK_MS)
            except (RedisError, OSError) as exc:
                await self._failed("read", backoff, exc)
                continue
            if not self.redis_ok:
                log.info("reading the dispatch stream", extra={"stream": self.keys.dispatch})
            self.redis_ok = True
            backoff.reset()
            await self._settle_all(entries, dict.fromkeys((e[0] for e in entries), 1))

    async def claim_loop(self) -> None:
        """XAUTOCLAIM entries idle longer than FLOWQ_CLAIM_IDLE_MS, walking the pending list by cursor."""
        backoff = Backoff(base=0.1, cap=self.settings.backoff_max_seconds)
        cursor = "0-0"
        interval = max(0.2, self.settings.claim_idle_ms / 2000)
        while not self.stopping.is_set():
            try:
                cursor, entries = await stream.autoclaim(
                    self.redis, self.keys, self.name, self.settings.claim_idle_ms, cursor, BATCH
                )
                counts = await stream.delivery_counts(
                    self.redis, self.keys, [e[0] for e in entries]
                )
            except (RedisError, OSError) as exc:
                cursor = "0-0"
                await self._failed("claim", backoff, exc)
                continue
            backoff.reset()
            if entries:
                await self._settle_all(entries, counts)
            if cursor == "0-0":
                try:
                    await asyncio.wait_for(self.stopping.wait(), interval)
                except TimeoutError:
                    pass

    async def _failed(self, loop: str, backoff: Backoff, exc: BaseException) -> None:
        self.redis_ok = False
        LOOP_ERRORS.labels(loop=loop).inc()
        delay = backoff.next()
        log.warning(
            "%s failed; retrying",
            loop,
            extra={
                "loop": loop,
                "failures": backoff.failures,
                "retry_in_seconds": round(delay, 2),
                "error": str(exc),
            },
        )
        try:
            await asyncio.wait_for(self.stopping.wait(), delay)
        except TimeoutError:
            pass

    async def _settle_all(self, entries: list[stream.Entry], deliveries: dict[str, int]) -> None:
        async def one(entry_id: str, fields: dict[str, str]) -> None:
            async with self._in_flight:
                await self._settle(entry_id, fields, deliveries.get(entry_id, 1))

        await asyncio.gather(*(one(entry_id, fields) for entry_id, fields in entries))

    async def _settle(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        with log_context(entry_id=entry_id, task_id=fields.get("taskId")):
            if deliveries > self.settings.max_deliveries:
                await self._dead_letter(
                    entry_id,
                    fields,
                    "max-deliveries",
                    deliveries,
                    "delivered more times than FLOWQ_MAX_DELIVERIES without an outcome",
                )
                return
            result = await handle(self.db, fields, self.run_task)
            try:
                await self._apply(entry_id, fields, deliveries, result)
            except (RedisError, OSError) as exc:
                # Not acked: the entry stays pending and is claimed again later.
                log.warning(
                    "could not settle entry",
                    extra={"outcome": result.outcome.value, "error": str(exc)},
                )

    async def _apply(
        self, entry_id: str, fields: dict[str, str], deliveries: int, result: Result
    ) -> None:
        MESSAGES.labels(outcome=result.outcome.value).inc()
        if result.outcome.acks:
            await stream.ack(self.redis, self.keys, entry_id)
            if result.outcome is Outcome.DISPATCHED:
                LAST_DISPATCH.set(time.time())
                enqueued = int(fields.get("enqueuedAt", "0")) / 1000
                if enqueued:
                    ENQUEUE_TO_ACCEPTED.observe(max(0.0, time.time() - enqueued))
            else:
                log.info(
                    "acked without dispatch",
                    extra={"outcome": result.outcome.value, "detail": result.detail},
                )
        elif result.outcome is Outcome.DEAD:
            await self._dead_letter(entry_id, fields, "decode-error", deliveries, result.detail)
        elif deliveries >= self.settings.max_deliveries:
            await self._dead_letter(entry_id, fields, "max-deliveries", deliveries, result.detail)
        else:
            log.info(
                "left pending; will retry",
                extra={"deliveries": deliveries, "detail": result.detail},
            )

    async def _dead_letter(
        self, entry_id: str, fields: dict[str, str], reason: str, attempts: int, error: str
    ) -> None:
        await stream.dead_letter(
            self.redis,
            self.keys,
            entry_id,
            fields,
            reason=reason,
            attempts=attempts,
            last_error=error,
        )
        DEAD_LETTERED.labels(reason=reason).inc()
        log.warning("dead-lettered", extra={"reason": reason, "attempts": attempts, "error": error})
