"""What to do with one stream entry. Plain use case: no Redis, no gRPC server code.

decode (malformed: dead-letter at once) -> load the task (database error: no ack) ->
missing: ack (task-missing) -> terminal, or owned under a live lease: ack (duplicate) ->
RunTask -> accepted, or claimed by someone else: ack -> busy or unreachable: no ack.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select

from flowq import status
from flowq.db import Database, ExecutorLeaseRow, TaskRow, utcnow
from flowq.errors import FlowqError
from flowq.stream import Envelope, EnvelopeError


class Outcome(enum.Enum):
    DISPATCHED = "dispatched"  # an executor accepted it: ack
    DUPLICATE = "duplicate"  # terminal, or owned under a live lease, or claimed by another: ack
    MISSING = "task-missing"  # the task no longer exists: ack
    DEAD = "decode-error"  # malformed: dead-letter at once
    RETRY = "retry"  # transient failure: leave pending

    @property
    def acks(self) -> bool:
        return self in (Outcome.DISPATCHED, Outcome.DUPLICATE, Outcome.MISSING)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str = ""
    task_id: str = ""


@dataclass(frozen=True)
class ExecutorAnswer:
    accepted: bool
    reason: str


# Calls ExecutorService.RunTask; raises FlowqError (retryable) when busy or unreachable.
RunTask = Callable[[str, int], Awaitable[ExecutorAnswer]]


async def handle(db: Database, fields: dict[str, str], run_task: RunTask) -> Result:
    try:
        envelope = Envelope.from_fields(fields)
    except EnvelopeError as exc:
        return Result(Outcome.DEAD, exc.message)
    try:
        async with db.session() as session:
            row = (
                await session.execute(
                    select(TaskRow.status, TaskRow.owner_id, ExecutorLeaseRow.expires_at)
                    .outerjoin(ExecutorLeaseRow, ExecutorLeaseRow.instance_id == TaskRow.owner_id)
                    .where(TaskRow.id == envelope.task_id)
                )
            ).one_or_none()
    except Exception as exc:  # noqa: BLE001 - any database failure is transient here
        return Result(Outcome.RETRY, f"database: {type(exc).__name__}: {exc}", envelope.task_id)
    if row is None:
        return Result(Outcome.MISSING, "task not found", envelope.task_id)
    task_status, owner, lease_expires = row
    if task_status in status.TERMINAL_TASK_STATUSES:
        return Result(Outcome.DUPLICATE, f"task already {task_status}", envelope.task_id)
    if task_status == status.RUNNING and lease_expires is not None and lease_expires > utcnow():
        return Result(
            Outcome.DUPLICATE, f"task running on {owner} under a live lease", envelope.task_id
        )
    try:
        answer = await run_task(envelope.task_id, envelope.attempt)
    except FlowqError as exc:
        return Result(Outcome.RETRY, f"executor: {exc.message}", envelope.task_id)
    if answer.accepted:
        return Result(Outcome.DISPATCHED, "", envelope.task_id)
    if answer.reason == "missing":
        return Result(Outcome.MISSING, "task not found by the executor", envelope.task_id)
    return Result(Outcome.DUPLICATE, f"not claimed: {answer.reason}", envelope.task_id)
