"""SQL of the executor. Every write after the claim is fenced by (owner_id, epoch):
when the fence moved, `FencedError` is raised and the caller stops without touching state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from flowq import status
from flowq.db import ExecutorLeaseRow, StepRunRow, TaskEventRow, TaskRow, update, utcnow
from flowq.db.queries import settle_steps
from flowq.errors import FencedError


@dataclass(frozen=True)
class Fence:
    task_id: str
    owner_id: str
    epoch: int
    attempt: int


@dataclass(frozen=True)
class Claimed:
    fence: Fence
    app_id: str
    workflow_name: str
    spec: dict[str, Any]
    steps: dict[str, tuple[str, int]]  # name -> (status, attempts) as stored
    cancel_requested: bool = False
    deadline_at: datetime | None = None  # the whole task must end by then (workflow timeoutSeconds)


def _owned(fence: Fence) -> Any:
    return (
        (TaskRow.id == fence.task_id)
        & (TaskRow.owner_id == fence.owner_id)
        & (TaskRow.epoch == fence.epoch)
        & (TaskRow.status == status.RUNNING)
    )


async def claim(session: AsyncSession, task_id: str, owner_id: str) -> Claimed | None:
    """QUEUED -> RUNNING for `owner_id` with epoch + 1, by compare-and-set; None if another won."""
    now = utcnow()
    row = (
        await session.execute(
            update(TaskRow)
            .where(TaskRow.id == task_id, TaskRow.status == status.QUEUED)
            .values(
                status=status.RUNNING,
                owner_id=owner_id,
                epoch=TaskRow.epoch + 1,
                updated_at=now,
                started_at=func.coalesce(TaskRow.started_at, now),  # the first start counts
            )
            .returning(
                TaskRow.epoch,
                TaskRow.attempt,
                TaskRow.app_id,
                TaskRow.workflow_name,
                TaskRow.workflow_spec,
                TaskRow.cancel_requested,
                TaskRow.deadline_at,
            )
        )
    ).one_or_none()
    if row is None:
        await session.rollback()
        return None
    epoch, attempt, app_id, workflow_name, spec, cancel, deadline = row
    fence = Fence(task_id, owner_id, epoch, attempt)
    await session.execute(
        insert(TaskEventRow).values(
            task_id=task_id,
            at=now,
            type="claimed",
            message=f"epoch {epoch}",
            owner_id=owner_id,
            attempt=attempt,
        )
    )
    steps = {
        name: (st, attempts)
        for name, st, attempts in (
            await session.execute(
                select(StepRunRow.name, StepRunRow.status, StepRunRow.attempts).where(
                    StepRunRow.task_id == task_id
                )
            )
        ).all()
    }
    await session.commit()
    return Claimed(fence, app_id, workflow_name, spec, steps, bool(cancel), deadline)


@dataclass(frozen=True)
class Ended:
    """What cleaning up after a task needs to know."""

    status: str
    app_id: str
    workflow_name: str
    spec: dict[str, Any]
    steps: dict[str, tuple[str, int]]  # name -> (status, attempts)


async def load_for_clean(session: AsyncSession, task_id: str) -> Ended | None:
    row = (
        await session.execute(
            select(
                TaskRow.status, TaskRow.app_id, TaskRow.workflow_name, TaskRow.workflow_spec
            ).where(TaskRow.id == task_id)
        )
    ).one_or_none()
    if row is None:
        return None
    steps = await session.execute(
        select(StepRunRow.name, StepRunRow.status, StepRunRow.attempts).where(
            StepRunRow.task_id == task_id
        )
    )
    return Ended(row[0], row[1], row[2], row[3], {n: (s, a) for n, s, a in steps.all()})


async def task_state(session: AsyncSession, task_id: str) -> tuple[str, str | None, bool] | None:
    """(status, owner_id, cancel_requested) of a task, or None when it does not exist."""
    row = (
        await session.execute(
            select(TaskRow.status, TaskRow.owner_id, TaskRow.cancel_requested).where(
                TaskRow.id == task_id
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], bool(row[2]))


async def fence_states(session: AsyncSession, fences: list[Fence]) -> dict[str, bool]:
    """cancel_requested of each task still owned under its fence; a task missing from the
    answer is no longer ours (the fence moved)."""
    by_id = {f.task_id: f for f in fences}
    rows = await session.execute(
        select(
            TaskRow.id, TaskRow.owner_id, TaskRow.epoch, TaskRow.status, TaskRow.cancel_requested
        ).where(TaskRow.id.in_(list(by_id)))
    )
    owned = {}
    for task_id, owner, epoch, task_status, cancel in rows.all():
        fence = by_id[task_id]
        if owner == fence.owner_id and epoch == fence.epoch and task_status == status.RUNNING:
            owned[task_id] = bool(cancel)
    return owned


async def update_step(
    session: AsyncSession,
    fence: Fence,
    name: str,
    *,
    event: str | None = None,
    event_message: str = "",
    **values: Any,
) -> None:
    """Set step columns, fenced; optionally append a task event in the same transaction.

    The fenced UPDATE of the task row comes first: it is the fence check, and the row lock it
    takes holds off any recovery of the task until this transaction ends, so the step write
    and the event after it need no check of their own.
    """
    now = utcnow()
    fenced = await session.execute(update(TaskRow).where(_owned(fence)).values(updated_at=now))
    if fenced.rowcount != 1:
        await session.rollback()
        raise FencedError(
            f"task {fence.task_id} is no longer owned by {fence.owner_id} at epoch {fence.epoch}"
        )
    if values:
        await session.execute(
            update(StepRunRow)
            .where(StepRunRow.task_id == fence.task_id, StepRunRow.name == name)
            .values(**values)
        )
    if event:
        await session.execute(
            insert(TaskEventRow).values(
                task_id=fence.task_id,
                at=now,
                type=event,
                message=event_message,
                owner_id=fence.owner_id,
                attempt=fence.attempt,
            )
        )
    await session.commit()


async def finish_task(
    session: AsyncSession, fence: Fence, final: str, reason: str, message: str
) -> None:
    """RUNNING -> SUCCEEDED/FAILED/CANCELLED, fenced; steps still PENDING become SKIPPED and
    any still RUNNING CANCELLED."""
    now = utcnow()
    values = dict(status=final, reason=reason, finished_at=now, updated_at=now)
    if final != status.CANCELLED:  # a cancelled task keeps the note CancelTask wrote (who, why)
        values["message"] = message
    result = await session.execute(update(TaskRow).where(_owned(fence)).values(**values))
    if result.rowcount != 1:
        await session.rollback()
        raise FencedError(
            f"task {fence.task_id} is no longer owned by {fence.owner_id} at epoch {fence.epoch}"
        )
    # An ended task has no running step: one stopped before it could record how it ended (in
    # its retry backoff, or while its RUNNING write was in flight) ends CANCELLED here.
    await settle_steps(
        session,
        fence.task_id,
        running_to=status.CANCELLED,
        running_message=f"stopped: task {final.lower()}",
        skip_pending=f"task {final.lower()}",
    )
    await session.execute(
        insert(TaskEventRow).values(
            task_id=fence.task_id,
            at=now,
            type=final.lower(),
            message=message or reason,
            owner_id=fence.owner_id,
            attempt=fence.attempt,
        )
    )
    await session.commit()


async def release(
    session: AsyncSession,
    fence: Fence,
    why: str,
    *,
    count_attempt: bool = False,
    max_attempts: int = 3,
) -> str | None:
    """Hand a task back: RUNNING -> QUEUED with epoch + 1, so another executor takes it at once.

    With `count_attempt` (an executor error, not a shutdown) attempt + 1, and FAILED past
    `max_attempts`. Returns the new status, or None when the fence had moved.
    """
    now = utcnow()
    give_up = count_attempt and fence.attempt >= max_attempts
    if give_up:
        values = dict(
            status=status.FAILED,
            reason=status.REASON_EXECUTOR_ERROR,
            finished_at=now,
            message=f"{why}; gave up after {fence.attempt} attempts",
        )
    else:
        values = dict(
            status=status.QUEUED,
            owner_id=None,
            enqueued_at=now,
            attempt=fence.attempt + (1 if count_attempt else 0),
        )
    result = await session.execute(
        update(TaskRow)
        .where(_owned(fence))
        .values(epoch=TaskRow.epoch + 1, updated_at=now, **values)
    )
    if result.rowcount != 1:
        await session.rollback()
        return None
    await settle_steps(
        session,
        fence.task_id,
        running_to=status.FAILED if give_up else status.PENDING,
        running_message=f"released: {why}",
        skip_pending="task failed" if give_up else None,
    )
    await session.execute(
        insert(TaskEventRow).values(
            task_id=fence.task_id,
            at=now,
            type="failed" if give_up else "released",
            message=why,
            owner_id=fence.owner_id,
            attempt=fence.attempt,
        )
    )
    await session.commit()
    return values["status"]


async def renew_lease(
    session: AsyncSession, instance_id: str, ttl_seconds: float, started_at: datetime
) -> datetime:
    """Upsert this executor's lease row; returns the new expiry."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    result = await session.execute(
        update(ExecutorLeaseRow)
        .where(ExecutorLeaseRow.instance_id == instance_id)
        .values(renewed_at=now, expires_at=expires)
    )
    if result.rowcount == 0:
        session.add(
            ExecutorLeaseRow(
                instance_id=instance_id, started_at=started_at, renewed_at=now, expires_at=expires
            )
        )
    await session.commit()
    return expires


async def drop_lease(session: AsyncSession, instance_id: str) -> None:
    lease = await session.get(ExecutorLeaseRow, instance_id)
    if lease is not None:
        await session.delete(lease)
        await session.commit()
