"""Recovery sweeps: SQL is the source of truth, the stream only the delivery path.

Every change is a compare-and-set, so any number of dispatchers may sweep at once.
- QUEUED, enqueued longer ago than FLOWQ_REQUEUE_AFTER_SECONDS and before the oldest entry
  still in the stream (so its own entry is gone: an XADD that failed after commit, a Redis that
  lost its data): enqueued again. Handled entries are deleted from the stream, so every task
  with an entry in the stream was enqueued at or after the oldest one; a long backlog is never
  duplicated. Tasks parked by a dead letter (`enqueued_at` NULL) wait for a replay.
- QUEUED and parked, but with no dead letter left (a Redis that lost its data, a dead-letter
  stream deleted by hand): nobody could replay or purge them, so they are enqueued again.
- RUNNING whose owner's lease expired: back to QUEUED (epoch + 1, attempt + 1), enqueued;
  past FLOWQ_MAX_TASK_ATTEMPTS: FAILED (owner-lost).
Start-up never cancels anything: a task is recovered only because its owner's lease expired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import ResponseError
from sqlalchemy import and_, delete, exists, or_, select

from flowq import status, stream
from flowq.db import (
    Database,
    ExecutorLeaseRow,
    StepRunRow,
    TaskEventRow,
    TaskRow,
    update,
    utcnow,
)
from flowq.db.queries import owner_gone, settle_steps
from flowq.keys import Keys
from flowq.log import log_context
from flowq.steptypes import KUBE_STEP_TYPES

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
# Entry ids carry Redis's clock, enqueued_at the apiserver's: allow this much difference.
CLOCK_SKEW_SECONDS = 5.0

RECOVERED = Counter(
    "flowq_tasks_recovered_total", "Tasks recovered by the sweep, by reason.", ["reason"]
)


async def requeue_stale(
    db: Database, redis: aioredis.Redis, keys: Keys, requeue_after: float
) -> int:
    """Enqueue QUEUED tasks whose entry left the stream without the task being handled."""
    now = utcnow()
    cutoff = now - timedelta(seconds=requeue_after)
    oldest = await redis.xrange(keys.dispatch, min="-", max="+", count=1)
    if oldest:
        oldest_ms = int(_text(oldest[0][0]).split("-")[0])
        oldest_at = datetime.fromtimestamp(oldest_ms / 1000, UTC)
        cutoff = min(cutoff, oldest_at - timedelta(seconds=CLOCK_SKEW_SECONDS))
    async with db.session() as session:
        rows = (
            await session.execute(
                select(TaskRow.id, TaskRow.attempt, TaskRow.enqueued_at)
                .where(TaskRow.status == status.QUEUED, TaskRow.enqueued_at < cutoff)
                .order_by(TaskRow.id)
                .limit(SWEEP_BATCH)
            )
        ).all()
    count = 0
    for task_id, attempt, enqueued_at in rows:
        count += await _enqueue_again(db, redis, keys, task_id, attempt, enqueued_at, "requeued")
    if count:
        log.info("re-enqueued queued tasks not delivered recently", extra={"tasks": count})
    return count


#: Dead letters are read this many at a time when looking for parked tasks' letters.
DEAD_LETTER_PAGE = 1000


async def _enqueue_again(
    db: Database,
    redis: aioredis.Redis,
    keys: Keys,
    task_id: str,
    attempt: int,
    enqueued_at: datetime | None,
    reason: str,
    event: str = "",
) -> bool:
    """A QUEUED task's `enqueued_at` from what was read to now, by compare-and-set (so one
    sweeper wins), with a `recovered` event saying `event` if given; then XADD it."""
    now = utcnow()
    async with db.session() as session:
        result = await session.execute(
            update(TaskRow)
            .where(
                TaskRow.id == task_id,
                TaskRow.status == status.QUEUED,
                TaskRow.enqueued_at == enqueued_at,  # IS NULL for a parked task
            )
            .values(enqueued_at=now)
        )
        if result.rowcount != 1:
            await session.rollback()
            return False
        if event:
            session.add(
                TaskEventRow(
                    task_id=task_id, at=now, type="recovered", message=event, attempt=attempt
                )
            )
        await session.commit()
    await stream.enqueue(redis, keys, stream.Envelope.new(task_id, attempt))
    RECOVERED.labels(reason=reason).inc()
    return True


async def _dead_letter_task_ids(redis: aioredis.Redis, keys: Keys) -> set[str]:
    """The task ids of every dead letter (the whole stream, page by page)."""
    task_ids: set[str] = set()
    start = "-"
    while True:
        page = await redis.xrange(keys.dead_letters, min=start, max="+", count=DEAD_LETTER_PAGE)
        for _entry_id, fields in page:
            for key, value in fields.items():
                if _text(key) == "field:taskId":
                    task_ids.add(_text(value))
        if len(page) < DEAD_LETTER_PAGE:
            return task_ids
        start = "(" + _text(page[-1][0])


async def unpark_lost(db: Database, redis: aioredis.Redis, keys: Keys) -> int:
    """Enqueue again the parked tasks (QUEUED, `enqueued_at` NULL) whose dead letter is gone.

    A purge fails the task before it deletes the letter, so a purged task is never taken for
    lost; a replay re-enqueues before it un-parks, so at worst it gets a second entry, which
    the dispatcher acks as a duplicate.
    """
    async with db.session() as session:
        parked = (
            await session.execute(
                select(TaskRow.id, TaskRow.attempt)
                .where(TaskRow.status == status.QUEUED, TaskRow.enqueued_at.is_(None))
                .order_by(TaskRow.id)
                .limit(SWEEP_BATCH)
            )
        ).all()
    if not parked:
        return 0
    letters = await _dead_letter_task_ids(redis, keys)  # read after the parked tasks
    gone = "its dead letter is gone (did Redis lose its data?); enqueued again"
    count = 0
    for task_id, attempt in parked:
        if task_id not in letters:
            count += await _enqueue_again(
                db, redis, keys, task_id, attempt, None, "dead-letter-lost", gone
            )
    if count:
        log.warning("re-enqueued parked tasks whose dead letter is gone", extra={"tasks": count})
    return count


async def recover_orphans(
    db: Database, redis: aioredis.Redis, keys: Keys, lease_ttl: float, max_attempts: int
) -> int:
    """Move RUNNING tasks whose owner's lease expired back to QUEUED, or FAILED after too many tries."""
    now = utcnow()
    async with db.session() as session:
        rows = (
            await session.execute(
                select(TaskRow.id, TaskRow.owner_id, TaskRow.epoch, TaskRow.attempt)
                .outerjoin(ExecutorLeaseRow, ExecutorLeaseRow.instance_id == TaskRow.owner_id)
                .where(TaskRow.status == status.RUNNING, owner_gone(now, lease_ttl))
                .limit(SWEEP_BATCH)
            )
        ).all()
    count = 0
    for task_id, owner, epoch, attempt in rows:
        with log_context(task_id=task_id):
            give_up = attempt >= max_attempts
            why = f"owner {owner} lost its lease"
            async with db.session() as session:
                fenced = (
                    (TaskRow.id == task_id)
                    & (TaskRow.epoch == epoch)
                    & (TaskRow.status == status.RUNNING)
                )
                if give_up:
                    values = dict(
                        status=status.FAILED,
                        reason=status.REASON_OWNER_LOST,
                        finished_at=now,
                        message=f"{why}; gave up after {attempt} attempts",
                        epoch=epoch + 1,
                        clean_pending=left_behind(task_id),
                    )
                else:
                    values = dict(
                        status=status.QUEUED,
                        owner_id=None,
                        epoch=epoch + 1,
                        attempt=attempt + 1,
                        enqueued_at=now,
                    )
                result = await session.execute(
                    update(TaskRow).where(fenced).values(updated_at=now, **values)
                )
                if result.rowcount != 1:
                    await session.rollback()
                    continue
                await settle_steps(
                    session,
                    task_id,
                    running_to=status.FAILED if give_up else status.PENDING,
                    running_message=why,
                    skip_pending="task failed" if give_up else None,
                )
                session.add(
                    TaskEventRow(
                        task_id=task_id,
                        at=now,
                        type="failed" if give_up else "recovered",
                        message=why,
                        owner_id=owner,
                        attempt=attempt,
                    )
                )
                await session.commit()
            RECOVERED.labels(reason=status.REASON_OWNER_LOST if give_up else "lease-expired").inc()
            log.warning(
                "recovered task from a lost owner", extra={"owner_id": owner, "gave_up": give_up}
            )
            if not give_up:
                await stream.enqueue(redis, keys, stream.Envelope.new(task_id, attempt + 1))
            count += 1
    return count


def left_behind(task_id: str) -> Any:
    """SQL: true when a step that creates objects (Kubernetes) started and did not succeed,
    so an executor must clean up after the task's lost owner."""
    return exists().where(
        StepRunRow.task_id == task_id,
        StepRunRow.type.in_(sorted(KUBE_STEP_TYPES)),
        StepRunRow.attempts > 0,
        StepRunRow.status != status.SUCCEEDED,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def housekeeping(db: Database, redis: aioredis.Redis, keys: Keys, stale_after: float) -> None:
    """Forget executors and dispatchers gone for `stale_after` seconds: expired lease rows (their
    tasks were recovered long ago) and consumers that hold no pending entries."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    async with db.session() as session:
        await session.execute(delete(ExecutorLeaseRow).where(ExecutorLeaseRow.expires_at < cutoff))
        await session.commit()
    try:
        consumers = await redis.xinfo_consumers(keys.dispatch, keys.group)
    except ResponseError:  # no stream or group yet
        return
    for consumer in consumers:
        if int(consumer["pending"]) == 0 and int(consumer["idle"]) > stale_after * 1000:
            await redis.xgroup_delconsumer(keys.dispatch, keys.group, consumer["name"])
            log.info("removed a departed consumer", extra={"consumer": _text(consumer["name"])})


async def fail_overdue(db: Database, lease_ttl: float) -> int:
    """FAILED (timeout) for tasks past their deadline that no live executor holds: QUEUED ones,
    and RUNNING ones whose owner's lease expired (a live owner enforces the deadline itself)."""
    now = utcnow()
    async with db.session() as session:
        rows = (
            await session.execute(
                select(TaskRow.id, TaskRow.owner_id, TaskRow.epoch, TaskRow.status, TaskRow.attempt)
                .outerjoin(ExecutorLeaseRow, ExecutorLeaseRow.instance_id == TaskRow.owner_id)
                .where(
                    TaskRow.deadline_at < now,
                    or_(
                        TaskRow.status == status.QUEUED,
                        and_(TaskRow.status == status.RUNNING, owner_gone(now, lease_ttl)),
                    ),
                )
                .limit(SWEEP_BATCH)
            )
        ).all()
    count = 0
    for task_id, owner, epoch, task_status, attempt in rows:
        with log_context(task_id=task_id):
            message = "the task ran past its workflow timeoutSeconds" + (
                f" (its owner {owner} is gone)" if owner else " while it waited to run"
            )
            async with db.session() as session:
                result = await session.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.id == task_id, TaskRow.epoch == epoch, TaskRow.status == task_status
                    )
                    .values(
                        status=status.FAILED,
                        reason=status.REASON_TIMEOUT,
                        message=message,
                        epoch=epoch + 1,
                        finished_at=now,
                        updated_at=now,
                        clean_pending=left_behind(task_id),
                    )
                )
                if result.rowcount != 1:
                    await session.rollback()
                    continue
                await settle_steps(
                    session,
                    task_id,
                    running_to=status.FAILED,
                    running_message="timeout",
                    skip_pending="task timed out",
                )
                session.add(
                    TaskEventRow(
                        task_id=task_id,
                        at=now,
                        type="failed",
                        message=message,
                        owner_id=owner,
                        attempt=attempt,
                    )
                )
                await session.commit()
            RECOVERED.labels(reason=status.REASON_TIMEOUT).inc()
            log.warning("task timed out", extra={"owner_id": owner or ""})
            count += 1
    return count


CLEAN_BATCH = 100
CLEAN_RETRY_MAX_SECONDS = 300.0

CLEANED = Counter(
    "flowq_tasks_cleaned_total",
    "Ended tasks whose left-behind Kubernetes objects an executor was asked to delete, by outcome.",
    ["outcome"],
)


async def clean_abandoned(
    db: Database,
    clean: Callable[[str], Awaitable[list[str]]],
    retry: dict[str, tuple[float, int]],
) -> int:
    """Ask an executor to clean up after tasks that ended without their owner (`clean_pending`).

    `clean(task_id)` is the CleanTask call; it raises on failure. `retry` holds, per task, when
    to try again and how many tries failed (this dispatcher's memory, backing off to
    CLEAN_RETRY_MAX_SECONDS), so a cluster that is down is not asked every sweep.
    """
    async with db.session() as session:
        ids = (
            (
                await session.execute(
                    select(TaskRow.id)
                    .where(TaskRow.clean_pending.is_(True))
                    .order_by(TaskRow.finished_at)
                    .limit(CLEAN_BATCH)
                )
            )
            .scalars()
            .all()
        )
    for gone in set(retry) - set(ids):
        del retry[gone]
    count = 0
    for task_id in ids:
        due, failures = retry.get(task_id, (0.0, 0))
        if due > time.monotonic():
            continue
        with log_context(task_id=task_id):
            try:
                deleted = await clean(task_id)
            except Exception as exc:  # noqa: BLE001 - tried again later, with backoff
                delay = min(CLEAN_RETRY_MAX_SECONDS, 2.0 ** (failures + 1))
                retry[task_id] = (time.monotonic() + delay, failures + 1)
                CLEANED.labels(outcome="failed").inc()
                log.warning(
                    "could not clean up after an abandoned task; trying again later",
                    extra={"error": str(exc), "retry_in_seconds": delay},
                )
                continue
            retry.pop(task_id, None)
            now = utcnow()
            message = (
                "deleted what its unfinished steps left: " + ", ".join(deleted)
                if deleted
                else "its unfinished steps left nothing behind"
            )
            async with db.session() as session:
                result = await session.execute(
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.clean_pending.is_(True))
                    .values(clean_pending=False)
                )
                if result.rowcount == 1:  # another dispatcher may have got there first
                    session.add(
                        TaskEventRow(task_id=task_id, at=now, type="cleaned", message=message)
                    )
                await session.commit()
            CLEANED.labels(outcome="cleaned").inc()
            log.info("cleaned up after an abandoned task", extra={"deleted": len(deleted)})
            count += 1
    return count
