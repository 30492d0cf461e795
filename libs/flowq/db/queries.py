"""SQL pieces more than one role needs: when an owner counts as gone, and how the steps of a
task that stops are settled."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from flowq import status
from flowq.db.engine import update
from flowq.db.models import ExecutorLeaseRow, StepRunRow, TaskRow


def owner_gone(now: datetime, lease_ttl_seconds: float) -> ColumnElement[bool]:
    """True for a task whose owner's lease expired, or whose owner has no lease row and the task
    has not moved for a lease TTL. Needs `TaskRow` outer-joined to `ExecutorLeaseRow` on owner."""
    return or_(
        ExecutorLeaseRow.expires_at < now,
        and_(
            ExecutorLeaseRow.instance_id.is_(None),
            TaskRow.updated_at < now - timedelta(seconds=lease_ttl_seconds),
        ),
    )


async def settle_steps(
    session: AsyncSession,
    task_id: str,
    *,
    running_to: str | None = None,
    running_message: str = "",
    skip_pending: str | None = None,
) -> None:
    """RUNNING steps become `running_to` (PENDING to run again, FAILED, ...); with `skip_pending`,
    steps not started become SKIPPED with that message. Part of the caller's transaction."""
    if running_to is not None:
        await session.execute(
            update(StepRunRow)
            .where(StepRunRow.task_id == task_id, StepRunRow.status == status.RUNNING)
            .values(status=running_to, message=running_message)
        )
    if skip_pending is not None:
        await session.execute(
            update(StepRunRow)
            .where(StepRunRow.task_id == task_id, StepRunRow.status == status.PENDING)
            .values(status=status.SKIPPED, message=skip_pending)
        )
