"""What to do with stream entries. Plain use case: no Redis and no gRPC server code here.

decode (malformed: dead-letter at once) -> load the tasks, one query per batch (database
error: no ack) -> missing: ack (task-missing) -> terminal, or owned under a live lease:
ack (duplicate) -> RunTask -> accepted, or claimed by someone else: ack ->
executor busy or unreachable: no ack, and the delivery does not count against the entry.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from flowq import status
from flowq.db import Database, ExecutorLeaseRow, TaskEventRow, TaskRow, update, utcnow
from flowq.db.queries import settle_steps
from flowq.errors import FlowqError
from flowq.stream import Entry, Envelope, EnvelopeError


class Outcome(enum.Enum):
    DISPATCHED = "dispatched"  # an executor accepted it: ack
    DUPLICATE = "duplicate"  # terminal, owned under a live lease, or claimed by another: ack
    MISSING = "task-missing"  # the task no longer exists: ack
    DEAD = "decode-error"  # malformed: dead-letter at once
    RETRY = (
        "retry"  # failed for this entry's own reason: no ack; counts toward FLOWQ_MAX_DELIVERIES
    )
    UNAVAILABLE = (
        "unavailable"  # a dependency is down (database, executors): no ack; does not count
    )

    @property
    def acks(self) -> bool:
        return self in (Outcome.DISPATCHED, Outcome.DUPLICATE, Outcome.MISSING)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str = ""
    task_id: str = ""
    enqueued_at_ms: int = 0
    #: For UNAVAILABLE: which dependency was down ("database" or "executor").
    dependency: str = ""


@dataclass(frozen=True)
class ExecutorAnswer:
    accepted: bool
    reason: str


# Calls ExecutorService.RunTask. Raises a retryable FlowqError when executors are busy or
# unreachable, a non-retryable one when the executor failed on this task.
RunTask = Callable[[str, int], Awaitable[ExecutorAnswer]]


async def handle_batch(
    db: Database, entries: Sequence[Entry], run_task: RunTask, max_concurrency: int
) -> dict[str, Result]:
    """Decide every entry of a batch; returns a Result per entry id."""
    results: dict[str, Result] = {}
    envelopes: dict[str, Envelope] = {}
    for entry_id, fields in entries:
        try:
            envelopes[entry_id] = Envelope.from_fields(fields)
        except EnvelopeError as exc:
            results[entry_id] = Result(Outcome.DEAD, exc.message, fields.get("taskId", ""))
    if not envelopes:
        return results
    try:
        rows = await _load(db, {e.task_id for e in envelopes.values()})
    except Exception as exc:  # noqa: BLE001 - any database failure is transient here
        detail = f"database: {type(exc).__name__}: {exc}"
        for entry_id, envelope in envelopes.items():
            results[entry_id] = Result(
                Outcome.UNAVAILABLE, detail, envelope.task_id, envelope.enqueued_at_ms, "database"
            )
        return results

    now = utcnow()
    to_run: list[tuple[str, Envelope]] = []
    for entry_id, envelope in envelopes.items():
        row = rows.get(envelope.task_id)
        if row is None:
            results[entry_id] = Result(Outcome.MISSING, "task not found", envelope.task_id)
            continue
        task_status, owner, lease_expires = row
        if task_status in status.TERMINAL_TASK_STATUSES:
            results[entry_id] = Result(
                Outcome.DUPLICATE, f"task already {task_status}", envelope.task_id
            )
        elif task_status == status.RUNNING and lease_expires is not None and lease_expires > now:
            results[entry_id] = Result(
                Outcome.DUPLICATE, f"task running on {owner} under a live lease", envelope.task_id
            )
        else:
            to_run.append((entry_id, envelope))

    limit = asyncio.Semaphore(max_concurrency)

    async def dispatch(entry_id: str, envelope: Envelope) -> None:
        async with limit:
            results[entry_id] = await _dispatch(envelope, run_task)

    await asyncio.gather(*(dispatch(entry_id, envelope) for entry_id, envelope in to_run))
    return results


async def _load(db: Database, task_ids: set[str]) -> dict[str, tuple[str, str | None, object]]:
    async with db.session() as session:
        found = await session.execute(
            select(TaskRow.id, TaskRow.status, TaskRow.owner_id, ExecutorLeaseRow.expires_at)
            .outerjoin(ExecutorLeaseRow, ExecutorLeaseRow.instance_id == TaskRow.owner_id)
            .where(TaskRow.id.in_(task_ids))
        )
        return {task_id: (st, owner, expires) for task_id, st, owner, expires in found.all()}


async def _dispatch(envelope: Envelope, run_task: RunTask) -> Result:
    try:
        answer = await run_task(envelope.task_id, envelope.attempt)
    except FlowqError as exc:
        if exc.retryable:
            return Result(
                Outcome.UNAVAILABLE,
                f"executor: {exc.message}",
                envelope.task_id,
                dependency="executor",
            )
        return Result(Outcome.RETRY, f"executor: {exc.message}", envelope.task_id)
    if answer.accepted:
        return Result(Outcome.DISPATCHED, "", envelope.task_id, envelope.enqueued_at_ms)
    if answer.reason == "missing":
        return Result(Outcome.MISSING, "task not found by the executor", envelope.task_id)
    return Result(Outcome.DUPLICATE, f"not claimed: {answer.reason}", envelope.task_id)


async def note_still_in_delivery(db: Database, task_ids: Sequence[str]) -> None:
    """Tasks whose entry waits, pending, for an executor: the delivery path still holds them,
    so the requeue sweep must not enqueue them again (it enqueues QUEUED tasks whose
    `enqueued_at` is older than FLOWQ_REQUEUE_AFTER_SECONDS)."""
    await _set_enqueued_at(db, task_ids, utcnow())


async def park(db: Database, task_ids: Sequence[str]) -> None:
    """Tasks whose entry was dead-lettered: the requeue sweep leaves them alone (enqueued_at
    NULL) until a replay puts them back, so a poison task does not cycle through the queue."""
    await _set_enqueued_at(db, task_ids, None)


async def unpark(db: Database, task_ids: Sequence[str]) -> None:
    """Replayed tasks are in the stream again; from now on the sweep watches them as usual."""
    await _set_enqueued_at(db, task_ids, utcnow())


async def _set_enqueued_at(db: Database, task_ids: Sequence[str], value: object) -> None:
    if not task_ids:
        return
    async with db.session() as session:
        await session.execute(
            update(TaskRow)
            .where(TaskRow.id.in_(list(task_ids)), TaskRow.status == status.QUEUED)
            .values(enqueued_at=value)
        )
        await session.commit()


async def abandon(db: Database, task_ids: Sequence[str], why: str) -> None:
    """Parked tasks whose dead letter is gone for good: FAILED (dead-lettered), saying why."""
    if not task_ids:
        return
    now = utcnow()
    async with db.session() as session:
        parked = (
            await session.scalars(
                update(TaskRow)
                .where(
                    TaskRow.id.in_(list(task_ids)),
                    TaskRow.status == status.QUEUED,
                    TaskRow.enqueued_at.is_(None),
                )
                .values(
                    status=status.FAILED,
                    reason=status.REASON_DEAD_LETTERED,
                    message=why,
                    finished_at=now,
                    updated_at=now,
                    epoch=TaskRow.epoch + 1,
                )
                .returning(TaskRow.id)
            )
        ).all()
        for task_id in parked:
            await settle_steps(session, task_id, skip_pending="task failed")
            session.add(TaskEventRow(task_id=task_id, at=now, type="failed", message=why))
        await session.commit()
