"""The stream consumer: reads new entries, claims stale ones, and settles every entry:
ack, leave pending (retried after FLOWQ_CLAIM_IDLE_MS), or dead-letter with a reason.

Loops never exit on transient errors: they back off with full jitter and go on, including
when Redis comes back empty (the group is recreated). An entry that could not be handed over
only because a dependency was busy or down (executors full or unreachable, the database away)
is held: it stays pending under this consumer, its delivery does not count toward
FLOWQ_MAX_DELIVERIES, and the read loop offers it again after a short pause before it reads
anything new. So a burst larger than the executors' capacity waits in order, in the stream,
and a dead executor's share goes to the others within a pause, not after FLOWQ_CLAIM_IDLE_MS.
The pause grows with full-jitter backoff only while nothing at all gets through.
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
from flowq.supervise import beat
from flowq_dispatcher.handling import (
    Outcome,
    Result,
    RunTask,
    handle_batch,
    note_still_in_delivery,
    park,
)

log = logging.getLogger(__name__)

BATCH = 64
BLOCK_MS = 2000
MAX_CONCURRENT_CALLS = 32
DEPENDENCY_PAUSE_MAX_SECONDS = 10.0
#: The pause before held entries are offered again while others still get through (executors
#: full, not down): about the time a task takes to free a slot.
BUSY_PAUSE_SECONDS = 0.05

MESSAGES = Counter(
    "flowq_dispatcher_messages_total", "Stream entries handled, by outcome.", ["outcome"]
)
DEAD_LETTERED = Counter(
    "flowq_dispatcher_dead_lettered_total",
    "Entries moved to the dead-letter stream, by reason.",
    ["reason"],
)
LOOP_ERRORS = Counter(
    "flowq_dispatcher_loop_errors_total", "Read and claim failures (Redis errors).", ["loop"]
)
LAST_DISPATCH = Gauge(
    "flowq_dispatcher_last_dispatch_timestamp_seconds",
    "Unix time of the last task handed to an executor.",
)
HELD = Gauge(
    "flowq_dispatcher_entries_held",
    "Stream entries this dispatcher holds, pending, until an executor (or the database) can "
    "take them.",
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
        self._busy = asyncio.Lock()  # one batch settles at a time; reads and claims share it
        # Short cap: once executors or the database are back, dispatching resumes within seconds.
        self._dependency_backoff = Backoff(
            base=0.1, cap=min(settings.backoff_max_seconds, DEPENDENCY_PAUSE_MAX_SECONDS)
        )
        self._paused_until = 0.0
        #: entry id -> (fields, its delivery count in Redis): pending under this consumer,
        #: waiting for a dependency; offered again before anything new is read, oldest offer
        #: first (an entry offered again goes to the end, so none is starved).
        self._held: dict[str, tuple[dict[str, str], int]] = {}

    async def read_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=self.settings.backoff_max_seconds)
        while not self.stopping.is_set():
            beat()
            await self._wait_while_paused()
            if self._held:
                await self._settle_held()
                continue
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
            if entries:
                await self._settle_all(entries, dict.fromkeys((e[0] for e in entries), 1))

    async def claim_loop(self) -> None:
        """XAUTOCLAIM entries idle longer than FLOWQ_CLAIM_IDLE_MS, walking the pending list by cursor."""
        backoff = Backoff(base=0.1, cap=self.settings.backoff_max_seconds)
        cursor = "0-0"
        interval = max(0.2, self.settings.claim_idle_ms / 2000)
        while not self.stopping.is_set():
            beat()
            await self._wait_while_paused()
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
                log.info("claimed idle entries", extra={"entries": len(entries)})
                await self._settle_all(entries, counts)
            if cursor == "0-0":
                await self._sleep(interval)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _wait_while_paused(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            await self._sleep(delay)

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
        await self._sleep(delay)

    async def _settle_held(self) -> None:
        """Offer the oldest held entries again (taken under the lock: the claim loop may have
        settled some meanwhile)."""
        async with self._busy:
            batch = list(self._held.items())[:BATCH]
            # Offering a held entry again counts as a delivery, as its XCLAIM would.
            await self._settle(
                [(i, f) for i, (f, _) in batch],
                {i: count + 1 for i, (_, count) in batch},
                held=True,
            )

    async def _settle_all(self, entries: list[stream.Entry], deliveries: dict[str, int]) -> None:
        """Settle `entries`, delivered `deliveries` times."""
        async with self._busy:
            await self._settle(entries, deliveries)

    async def _settle(
        self, entries: list[stream.Entry], deliveries: dict[str, int], held: bool = False
    ) -> None:
        """Settle a batch; the caller holds `_busy`."""
        fields = dict(entries)
        live = [(i, f) for i, f in entries if deliveries.get(i, 1) <= self.settings.max_deliveries]
        for entry_id, _ in entries:
            if deliveries.get(entry_id, 1) > self.settings.max_deliveries:
                await self._guard(
                    self._dead_letter(
                        entry_id,
                        fields[entry_id],
                        "max-deliveries",
                        deliveries[entry_id],
                        "delivered more times than FLOWQ_MAX_DELIVERIES without an outcome",
                    )
                )
        results = await handle_batch(self.db, live, self.run_task, MAX_CONCURRENT_CALLS)
        for entry_id in fields:
            result = results.get(entry_id)
            self._held.pop(entry_id, None)
            if result is not None and result.outcome is Outcome.UNAVAILABLE:
                # Its count goes back to what it was before this delivery (see _after).
                count = max(0, deliveries.get(entry_id, 1) - 1)
                self._held[entry_id] = (fields[entry_id], count)
        HELD.set(len(self._held))
        acked = [i for i, r in results.items() if r.outcome.acks]
        for result in results.values():
            MESSAGES.labels(outcome=result.outcome.value).inc()
        if acked and not await self._guard(stream.ack(self.redis, self.keys, *acked)):
            # Not acked: they stay pending and are claimed again later. Redis is away, so
            # pause before offering held entries again (the read loop would not).
            self.redis_ok = False
            self._paused_until = time.monotonic() + self._dependency_backoff.next()
            return
        if held:  # a held entry's count in Redis lags one behind: a failure must count
            for entry_id, result in results.items():
                if result.outcome is Outcome.RETRY:
                    await self._guard(
                        stream.set_delivery_count(
                            self.redis, self.keys, self.name, entry_id, deliveries[entry_id]
                        )
                    )
        unavailable = False
        for entry_id, result in results.items():
            with log_context(entry_id=entry_id, task_id=result.task_id):
                unavailable |= result.outcome is Outcome.UNAVAILABLE
                await self._guard(
                    self._after(entry_id, fields[entry_id], deliveries.get(entry_id, 1), result)
                )
        waiting = [r.task_id for r in results.values() if r.dependency == "executor"]
        if waiting:
            try:
                await note_still_in_delivery(self.db, waiting)
            except Exception as exc:  # noqa: BLE001 - only an optimisation of the sweep
                log.warning("could not note tasks still in delivery", extra={"error": str(exc)})
        progress = any(r.outcome is Outcome.DISPATCHED for r in results.values())
        if unavailable and progress:  # executors full: others got through, try again soon
            self._dependency_backoff.reset()
            self._paused_until = time.monotonic() + BUSY_PAUSE_SECONDS
        elif unavailable:
            delay = self._dependency_backoff.next()
            self._paused_until = time.monotonic() + delay
            log.warning(
                "a dependency is unavailable; pausing",
                extra={"pause_seconds": round(delay, 2), "entries_held": len(self._held)},
            )
        elif results:
            self._dependency_backoff.reset()

    async def _guard(self, action: object) -> bool:
        """Run a Redis write; on failure log it and leave the entry pending (it is claimed again)."""
        try:
            await action  # type: ignore[misc]
            return True
        except (RedisError, OSError) as exc:
            log.warning("could not settle entries; they stay pending", extra={"error": str(exc)})
            return False

    async def _after(
        self, entry_id: str, fields: dict[str, str], deliveries: int, result: Result
    ) -> None:
        if result.outcome is Outcome.DISPATCHED:
            LAST_DISPATCH.set(time.time())
            if result.enqueued_at_ms:
                ENQUEUE_TO_ACCEPTED.observe(max(0.0, time.time() - result.enqueued_at_ms / 1000))
        elif result.outcome.acks:
            log.info(
                "acked without dispatch",
                extra={"outcome": result.outcome.value, "detail": result.detail},
            )
        elif result.outcome is Outcome.DEAD:
            await self._dead_letter(entry_id, fields, "decode-error", deliveries, result.detail)
        elif result.outcome is Outcome.UNAVAILABLE:
            # Undo this delivery's count: the entry is not at fault.
            await stream.set_delivery_count(
                self.redis, self.keys, self.name, entry_id, max(0, deliveries - 1)
            )
            log.info("left pending; a dependency is unavailable", extra={"detail": result.detail})
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
        task_id = fields.get("taskId", "")
        if reason == "max-deliveries" and task_id:
            try:
                await park(self.db, [task_id])
            except Exception as exc:  # noqa: BLE001 - then the sweep may enqueue it again later
                log.warning("could not park the dead-lettered task", extra={"error": str(exc)})
