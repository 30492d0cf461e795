"""SQL of the executor. Every write after the claim is fenced by (owner_id, epoch):
when the fence moved, `FencedError` is raised and the caller stops without touching state.

The writes of a running task (claim, step transitions, finish) are the hot path: they are
Core statements built once, with bound parameters, on the tables themselves. SQLAlchemy then
neither builds a statement nor computes its cache key per call, and the ORM's bulk-update
machinery stays out of it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, and_, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flowq import status
from flowq.db import ExecutorLeaseRow, StepRunRow, TaskEventRow, TaskRow, update, utcnow
from flowq.db.models import UTCDateTime
from flowq.db.queries import settle_steps
from flowq.errors import FencedError

_TASKS = TaskRow.__table__
_STEPS = StepRunRow.__table__
_EVENTS = TaskEventRow.__table__

#: Parameters every fenced statement takes (see `_params`).
_FENCED = and_(
    _TASKS.c.id == bindparam("f_task"),
    _TASKS.c.owner_id == bindparam("f_owner"),
    _TASKS.c.epoch == bindparam("f_epoch"),
    _TASKS.c.status == status.RUNNING,
)
_NOW = bindparam("f_now", type_=UTCDateTime())
_TOUCH = _TASKS.update().where(_FENCED).values(updated_at=_NOW)
_ADD_EVENT = _EVENTS.insert().values(
    task_id=bindparam("f_task"),
    at=_NOW,
    type=bindparam("e_type"),
    message=bindparam("e_message"),
    owner_id=bindparam("f_owner"),
    attempt=bindparam("f_attempt"),
)
_CLAIM = (
    _TASKS.update()
    .where(_TASKS.c.id == bindparam("f_task"), _TASKS.c.status == status.QUEUED)
    .values(
        status=status.RUNNING,
        owner_id=bindparam("f_owner"),
        epoch=_TASKS.c.epoch + 1,
        updated_at=_NOW,
        started_at=func.coalesce(_TASKS.c.started_at, _NOW),  # the first start counts
    )
    .returning(
        _TASKS.c.epoch,
        _TASKS.c.attempt,
        _TASKS.c.app_id,
        _TASKS.c.workflow_name,
        _TASKS.c.workflow_spec,
        _TASKS.c.cancel_requested,
        _TASKS.c.deadline_at,
    )
)
_STEP_STATES = select(_STEPS.c.name, _STEPS.c.status, _STEPS.c.attempts).where(
    _STEPS.c.task_id == bindparam("f_task")
)


@functools.cache
def _set_step(columns: tuple[str, ...]) -> Update:
    """UPDATE of one step's `columns` (bound as `v_<column>`), built once per column set."""
    return (
        _STEPS.update()
        .where(_STEPS.c.task_id == bindparam("f_task"), _STEPS.c.name == bindparam("s_name"))
        .values({c: bindparam(f"v_{c}") for c in columns})
    )


@functools.cache
def _set_fenced_task(columns: tuple[str, ...]) -> Update:
    """Fenced UPDATE of the task's `columns` (bound as `v_<column>`) and its updated_at."""
    return (
        _TASKS.update()
        .where(_FENCED)
        .values({"updated_at": _NOW, **{c: bindparam(f"v_{c}") for c in columns}})
    )


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


@dataclass(frozen=True)
class StepWrite:
    """A step's columns to set and the event to append, as of `at`.

    The controller keeps a step's end (SUCCEEDED) until the task's next write, so a serial
    workflow records one step's end and the next step's start in one transaction, and its last
    step's end with the task's.
    """

    name: str
    values: dict[str, Any]
    event: str | None = None
    event_message: str = ""
    at: datetime = field(default_factory=utcnow)


async def _write_steps(session: AsyncSession, fence: Fence, writes: Sequence[StepWrite]) -> None:
    for w in writes:
        params = _params(fence, w.at, s_name=w.name, e_type=w.event, e_message=w.event_message)
        if w.values:
            columns = tuple(sorted(w.values))
            params.update({f"v_{c}": w.values[c] for c in columns})
            await session.execute(_set_step(columns), params)
        if w.event:
            await session.execute(_ADD_EVENT, params)


def _params(fence: Fence, now: datetime, **more: Any) -> dict[str, Any]:
    return {
        "f_task": fence.task_id,
        "f_owner": fence.owner_id,
        "f_epoch": fence.epoch,
        "f_attempt": fence.attempt,
        "f_now": now,
        **more,
    }


def _moved(fence: Fence) -> FencedError:
    return FencedError(
        f"task {fence.task_id} is no longer owned by {fence.owner_id} at epoch {fence.epoch}"
    )


async def claim(session: AsyncSession, task_id: str, owner_id: str) -> Claimed | None:
    """QUEUED -> RUNNING for `owner_id` with epoch + 1, by compare-and-set; None if another won."""
    now = utcnow()
    claimed = {"f_task": task_id, "f_owner": owner_id, "f_now": now}
    row = (await session.execute(_CLAIM, claimed)).one_or_none()
    if row is None:
        await session.rollback()
        return None
    epoch, attempt, app_id, workflow_name, spec, cancel, deadline = row
    fence = Fence(task_id, owner_id, epoch, attempt)
    await session.execute(
        _ADD_EVENT, _params(fence, now, e_type="claimed", e_message=f"epoch {epoch}")
    )
    steps = {
        name: (st, attempts)
        for name, st, attempts in (await session.execute(_STEP_STATES, claimed)).all()
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


async def write_steps(session: AsyncSession, fence: Fence, writes: Sequence[StepWrite]) -> None:
    """Apply step writes (columns and events) in one transaction, fenced.

    The fenced UPDATE of the task row comes first: it is the fence check, and the row lock it
    takes holds off any recovery of the task until this transaction ends, so the step writes
    and events after it need no check of their own.
    """
    fenced = await session.execute(_TOUCH, _params(fence, utcnow()))
    if fenced.rowcount != 1:
        await session.rollback()
        raise _moved(fence)
    await _write_steps(session, fence, writes)
    await session.commit()


async def finish_task(
    session: AsyncSession,
    fence: Fence,
    final: str,
    reason: str,
    message: str,
    before: Sequence[StepWrite] = (),
) -> None:
    """RUNNING -> SUCCEEDED/FAILED/CANCELLED, fenced, after the step writes `before`; steps
    still PENDING become SKIPPED and any still RUNNING CANCELLED."""
    now = utcnow()
    params = _params(
        fence,
        now,
        v_status=final,
        v_reason=reason,
        v_finished_at=now,
        v_message=message,
        e_type=final.lower(),
        e_message=message or reason,
    )
    # A cancelled task keeps the message CancelTask wrote (who, why).
    columns = ("status", "reason", "finished_at")
    if final != status.CANCELLED:
        columns += ("message",)
    result = await session.execute(_set_fenced_task(columns), params)
    if result.rowcount != 1:
        await session.rollback()
        raise _moved(fence)
    await _write_steps(session, fence, before)
    # An ended task has no running step: one stopped before it could record how it ended (in
    # its retry backoff, or while its RUNNING write was in flight) ends CANCELLED here.
    await settle_steps(
        session,
        fence.task_id,
        running_to=status.CANCELLED,
        running_message=f"stopped: task {final.lower()}",
        skip_pending=f"task {final.lower()}",
    )
    await session.execute(_ADD_EVENT, params)
    await session.commit()


async def release(
    session: AsyncSession,
    fence: Fence,
    why: str,
    *,
    count_attempt: bool = False,
    max_attempts: int = 3,
    before: Sequence[StepWrite] = (),
) -> str | None:
    """Hand a task back: RUNNING -> QUEUED with epoch + 1, so another executor takes it at once.

    With `count_attempt` (an executor error, not a shutdown) attempt + 1, and FAILED past
    `max_attempts`. The step writes `before` (ends kept back) come first, so steps that
    succeeded stay SUCCEEDED. Returns the new status, or None when the fence had moved.
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
        _TASKS.update().where(_FENCED).values(epoch=_TASKS.c.epoch + 1, updated_at=_NOW, **values),
        _params(fence, now),
    )
    if result.rowcount != 1:
        await session.rollback()
        return None
    await _write_steps(session, fence, before)
    await settle_steps(
        session,
        fence.task_id,
        running_to=status.FAILED if give_up else status.PENDING,
        running_message=f"released: {why}",
        skip_pending="task failed" if give_up else None,
    )
    await session.execute(
        _ADD_EVENT,
        _params(fence, now, e_type="failed" if give_up else "released", e_message=why),
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
