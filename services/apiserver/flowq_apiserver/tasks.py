"""Use cases on tasks: exec (SQL first, then the stream), cancel, read, list, watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import redis.asyncio as aioredis
from google.protobuf import json_format
from redis.exceptions import RedisError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowq import status
from flowq.changes import ChangeListener
from flowq.db import StepRunRow, TaskEventRow, TaskRow, WorkflowRow, new_task_id, update, utcnow
from flowq.db.queries import settle_steps
from flowq.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from flowq.keys import Keys
from flowq.steptypes import STEP_TYPES
from flowq.stream import Envelope, enqueue
from flowq.v1 import types_pb2
from flowq_apiserver import paging
from flowq_apiserver.convert import task_message
from flowq_apiserver.validation import check_name

log = logging.getLogger(__name__)

# WatchTask re-reads the task quickly after a change and slows down while nothing changes.
WATCH_FALLBACK_SECONDS = 2.0


async def exec_workflow(
    session: AsyncSession,
    redis: aioredis.Redis,
    keys: Keys,
    app_id: str,
    workflow_name: str,
    idempotency_key: str,
    *,
    shell_allowed: bool,
) -> types_pb2.Task:
    """Store the task (QUEUED, every step PENDING) in one transaction, then XADD its envelope.

    A failed XADD loses nothing: the task is in SQL, and the dispatcher's sweep enqueues
    QUEUED tasks that were not delivered recently.
    """
    check_name("app_id", app_id)
    check_name("workflow_name", workflow_name)
    if len(idempotency_key) > 255:
        raise InvalidArgumentError(
            "idempotency_key is longer than 255 characters", field="idempotency_key"
        )
    key = idempotency_key or None
    if key is not None:
        existing = await _by_idempotency_key(session, app_id, key)
        if existing is not None:
            return await _same_request(session, existing, workflow_name)
    workflow = (
        await session.execute(
            select(WorkflowRow.spec, WorkflowRow.version).where(
                WorkflowRow.app_id == app_id, WorkflowRow.name == workflow_name
            )
        )
    ).one_or_none()
    if workflow is None:
        raise NotFoundError(
            f"workflow {workflow_name!r} not found in application {app_id!r}; "
            "create it first (PutWorkflow, or flowq apply -f FILE)"
        )
    definition = json_format.ParseDict(
        workflow.spec, types_pb2.Workflow(), ignore_unknown_fields=True
    )
    if not shell_allowed and any(
        STEP_TYPES[s.type].needs_shell for s in definition.steps if s.type in STEP_TYPES
    ):
        raise FailedPreconditionError(
            f"workflow {workflow_name!r} has shell steps and shell steps are disabled on this server "
            "(FLOWQ_EXECUTOR_ALLOW_SHELL=false)"
        )
    now = utcnow()
    task = TaskRow(
        id=new_task_id(),
        app_id=app_id,
        workflow_name=workflow_name,
        workflow_spec=workflow.spec,
        status=status.QUEUED,
        reason="",
        message="",
        epoch=0,
        attempt=1,
        cancel_requested=False,
        idempotency_key=key,
        created_at=now,
        enqueued_at=now,
        updated_at=now,
        deadline_at=now + timedelta(seconds=definition.timeout_seconds)
        if definition.timeout_seconds
        else None,
    )
    steps = [
        StepRunRow(
            task_id=task.id,
            name=s.name,
            position=i,
            type=s.type,
            status=status.PENDING,
            attempts=0,
            message="",
            output="",
        )
        for i, s in enumerate(definition.steps)
    ]
    created = TaskEventRow(
        task_id=task.id,
        at=now,
        type="created",
        message=f"workflow version {workflow.version}",
        attempt=1,
    )
    try:
        # Core INSERTs (the rows above are only the reply's source): the task row first, as
        # steps and events refer to it; the steps in one executemany.
        await session.execute(insert(TaskRow.__table__), _columns(task))
        if steps:
            await session.execute(insert(StepRunRow.__table__), [_columns(s) for s in steps])
        await session.execute(insert(TaskEventRow.__table__), _columns(created))
        await session.commit()
    except IntegrityError:
        await session.rollback()
        if key is None:
            raise
        existing = await _by_idempotency_key(session, app_id, key)  # lost a race on the same key
        if existing is None:
            raise
        return await _same_request(session, existing, workflow_name)
    # The reply is the task as stored (QUEUED), built from the rows just written (no read
    # back), and before the XADD, since an executor may claim it the moment it is enqueued.
    reply = task_message(task, steps, [created])
    try:
        await enqueue(redis, keys, Envelope.new(task.id, attempt=1))
    except (RedisError, OSError) as exc:
        log.warning(
            "task stored but not enqueued; the dispatcher's sweep will enqueue it",
            extra={"task_id": task.id, "error": str(exc)},
        )
    return reply


def _columns(row: TaskRow | StepRunRow | TaskEventRow) -> dict[str, object]:
    """The column values set on a new, unsaved row (columns left unset get their defaults)."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key in row.__dict__}


async def cancel_task(
    session: AsyncSession,
    redis: aioredis.Redis,
    keys: Keys,
    app_id: str,
    task_id: str,
    reason: str,
    user: str,
) -> types_pb2.Task:
    """QUEUED: CANCELLED at once. RUNNING: flag it and tell its owner on the cancel channel."""
    check_name("app_id", app_id)
    row = await _load(session, task_id)
    if row.app_id != app_id:
        raise NotFoundError(f"task {task_id!r} not found in application {app_id!r}")
    now = utcnow()
    who = f" by {user}" if user else ""
    note = f"cancel requested{who}" + (f": {reason}" if reason else "")
    if row.status in status.TERMINAL_TASK_STATUSES:
        raise FailedPreconditionError(
            f"task {task_id} already ended ({row.status}); nothing to cancel"
        )
    result = await session.execute(
        update(TaskRow)
        .where(TaskRow.id == task_id, TaskRow.status == status.QUEUED)
        .values(
            status=status.CANCELLED,
            reason=status.REASON_CANCELLED,
            message=note,
            cancel_requested=True,
            finished_at=now,
            updated_at=now,
        )
    )
    if result.rowcount == 1:
        await settle_steps(session, task_id, skip_pending="task cancelled")
        session.add(
            TaskEventRow(
                task_id=task_id, at=now, type="cancelled", message=note, attempt=row.attempt
            )
        )
        await session.commit()
        await _announce_change(redis, keys, task_id)
        return await get_task(session, task_id)
    flagged = await session.execute(
        update(TaskRow)
        .where(TaskRow.id == task_id, TaskRow.status == status.RUNNING)
        .values(cancel_requested=True, message=note, updated_at=now)
    )
    if flagged.rowcount != 1:  # it ended (or was handed back) since we read it: look again
        await session.rollback()
        return await cancel_task(session, redis, keys, app_id, task_id, reason, user)
    session.add(
        TaskEventRow(
            task_id=task_id, at=now, type="cancel-requested", message=note, attempt=row.attempt
        )
    )
    await session.commit()
    try:
        await redis.publish(keys.cancel, task_id)
    except (
        RedisError,
        OSError,
    ) as exc:  # the database flag is the truth; the owner sees it on its next check
        log.warning(
            "cancel not published; the owner will see the flag",
            extra={"task_id": task_id, "error": str(exc)},
        )
    await _announce_change(redis, keys, task_id)
    return await get_task(session, task_id)


async def _announce_change(redis: aioredis.Redis, keys: Keys, task_id: str) -> None:
    """Wake the task's watchers on every apiserver (best effort: they also read SQL now and then)."""
    with contextlib.suppress(RedisError, OSError):
        await redis.publish(keys.task_changes, task_id)


async def get_task(session: AsyncSession, task_id: str) -> types_pb2.Task:
    row = await _load(session, task_id)
    steps = (
        await session.scalars(
            select(StepRunRow).where(StepRunRow.task_id == task_id).order_by(StepRunRow.position)
        )
    ).all()
    events = (
        await session.scalars(
            select(TaskEventRow).where(TaskEventRow.task_id == task_id).order_by(TaskEventRow.id)
        )
    ).all()
    return task_message(row, steps, events)


async def list_tasks(
    session: AsyncSession, app_id: str, workflow_name: str, status_value: int, size: int, token: str
) -> tuple[list[types_pb2.Task], str]:
    """Newest first; task ids are time-ordered, so the last id is a stable page key."""
    limit = paging.page_size(size)
    after = paging.decode(token)
    query = select(TaskRow).order_by(TaskRow.id.desc()).limit(limit + 1)
    if app_id:
        query = query.where(TaskRow.app_id == check_name("app_id", app_id))
    if workflow_name:
        query = query.where(TaskRow.workflow_name == check_name("workflow_name", workflow_name))
    if status_value:
        if status_value not in types_pb2.TaskStatus.values():
            raise InvalidArgumentError(f"unknown status {status_value}", field="status")
        query = query.where(TaskRow.status == status.task_status_from_proto(status_value))
    if after is not None:
        query = query.where(TaskRow.id < after)
    rows = list((await session.scalars(query)).all())
    page = rows[:limit]
    steps_by_task: dict[str, list[StepRunRow]] = {r.id: [] for r in page}
    if page:
        for step in (
            await session.scalars(
                select(StepRunRow)
                .where(StepRunRow.task_id.in_(list(steps_by_task)))
                .order_by(StepRunRow.position)
            )
        ).all():
            steps_by_task[step.task_id].append(step)
    next_token = paging.encode(page[-1].id) if len(rows) > limit else ""
    return [task_message(r, steps_by_task[r.id]) for r in page], next_token


async def watch_task(
    sessions: async_sessionmaker[AsyncSession], changes: ChangeListener, task_id: str
) -> AsyncIterator[types_pb2.Task]:
    """Yield the task now and on every change, until it ends.

    The task is read again when its change is published on the task-changes channel, and at
    least every WATCH_FALLBACK_SECONDS (a lost message only delays an update). Changes that
    come faster than a read are seen together: the last state is always delivered.
    """
    last: bytes | None = None
    with changes.watching(task_id) as changed:
        while True:
            changed.clear()  # before the read: a change during it wakes the next wait at once
            async with sessions() as session:
                task = await get_task(session, task_id)
            snapshot = task.SerializeToString(deterministic=True)
            if snapshot != last:
                last = snapshot
                yield task
            if status.task_status_from_proto(task.status) in status.TERMINAL_TASK_STATUSES:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), WATCH_FALLBACK_SECONDS)


async def _load(session: AsyncSession, task_id: str) -> TaskRow:
    if not task_id:
        raise InvalidArgumentError("task_id is required", field="task_id")
    row = await session.get(TaskRow, task_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"task {task_id!r} not found")
    return row


async def _same_request(
    session: AsyncSession, existing: TaskRow, workflow_name: str
) -> types_pb2.Task:
    """The task an idempotency key already made, if it was made for the same workflow."""
    if existing.workflow_name != workflow_name:
        raise AlreadyExistsError(
            f"idempotency_key {existing.idempotency_key!r} was already used for workflow "
            f"{existing.workflow_name!r} (task {existing.id}); use a new key for {workflow_name!r}",
            field="idempotency_key",
        )
    return await get_task(session, existing.id)


async def _by_idempotency_key(session: AsyncSession, app_id: str, key: str) -> TaskRow | None:
    return await session.scalar(
        select(TaskRow).where(TaskRow.app_id == app_id, TaskRow.idempotency_key == key)
    )
