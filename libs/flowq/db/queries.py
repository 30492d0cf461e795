"""SQL pieces more than one role needs: when an owner counts as gone, and how the steps of a
task that stops are settled."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, case, or_
from sqlalchemy.ext.asyncio import AsyncSession

from flowq import status
from flowq.db.models import ExecutorLeaseRow, StepRunRow, TaskRow

_STEPS = StepRunRow.__table__
_RUNNING = _STEPS.c.status == status.RUNNING
# Built once (hot path: every task's end); one statement when both kinds of step are settled.
_SETTLE_RUNNING = (
    _STEPS.update()
    .where(_STEPS.c.task_id == bindparam("task"), _RUNNING)
    .values(status=bindparam("to"), message=bindparam("why"))
)
_SKIP_PENDING = (
    _STEPS.update()
    .where(_STEPS.c.task_id == bindparam("task"), _STEPS.c.status == status.PENDING)
    .values(status=status.SKIPPED, message=bindparam("skip"))
)
_SETTLE_BOTH = (
    _STEPS.update()
    .where(
        _STEPS.c.task_id == bindparam("task"),
        _STEPS.c.status.in_([status.RUNNING, status.PENDING]),
    )
    .values(
        status=case((_RUNNING, bindparam("to")), else_=status.SKIPPED),
        message=case((_RUNNING, bindparam("why")), else_=bindparam("skip")),
    )
)


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
    if running_to is not None and skip_pending is not None:
        await session.execute(
            _SETTLE_BOTH,
            {"task": task_id, "to": running_to, "why": running_message, "skip": skip_pending},
        )
    elif running_to is not None:
        await session.execute(
            _SETTLE_RUNNING, {"task": task_id, "to": running_to, "why": running_message}
        )
    elif skip_pending is not None:
        await session.execute(_SKIP_PENDING, {"task": task_id, "skip": skip_pending})
