"""Use cases on workflow definitions."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flowq.db import WorkflowRow, utcnow
from flowq.errors import InvalidArgumentError, NotFoundError
from flowq.v1 import types_pb2
from flowq_apiserver import paging
from flowq_apiserver.convert import spec_of, workflow_message
from flowq_apiserver.validation import check_name, check_workflow


async def put_workflow(
    session: AsyncSession,
    app_id: str,
    name: str,
    workflow: types_pb2.Workflow,
    *,
    shell_allowed: bool,
) -> types_pb2.Workflow:
    """Create or replace a definition (version + 1 on replace)."""
    check_name("app_id", app_id)
    check_name("name", name)
    for field, given, expected in (
        ("workflow.app_id", workflow.app_id, app_id),
        ("workflow.name", workflow.name, name),
    ):
        if given and given != expected:
            raise InvalidArgumentError(
                f"{field} is {given!r} but the request is for {expected!r}", field=field
            )
    check_workflow(workflow, shell_allowed=shell_allowed)
    spec = spec_of(workflow)
    now = utcnow()
    for _ in range(2):  # a concurrent first put may win the insert; then we replace it
        row = await _find(session, app_id, name)
        if row is None:
            row = WorkflowRow(
                app_id=app_id, name=name, spec=spec, version=1, created_at=now, updated_at=now
            )
            session.add(row)
        else:
            row.spec, row.version, row.updated_at = spec, row.version + 1, now
        try:
            await session.commit()
            return workflow_message(row)
        except IntegrityError:
            await session.rollback()
    raise InvalidArgumentError(f"workflow {name!r} changed concurrently; try again", field="name")


async def get_workflow(session: AsyncSession, app_id: str, name: str) -> types_pb2.Workflow:
    check_name("app_id", app_id)
    check_name("name", name)
    row = await _find(session, app_id, name)
    if row is None:
        raise NotFoundError(f"workflow {name!r} not found in application {app_id!r}")
    return workflow_message(row)


async def list_workflows(
    session: AsyncSession, app_id: str, size: int, token: str
) -> tuple[list[types_pb2.Workflow], str]:
    check_name("app_id", app_id)
    limit = paging.page_size(size)
    after = paging.decode(token)
    query = (
        select(WorkflowRow)
        .where(WorkflowRow.app_id == app_id)
        .order_by(WorkflowRow.name)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(WorkflowRow.name > after)
    rows = list((await session.scalars(query)).all())
    next_token = paging.encode(rows[limit - 1].name) if len(rows) > limit else ""
    return [workflow_message(r) for r in rows[:limit]], next_token


async def delete_workflow(session: AsyncSession, app_id: str, name: str) -> None:
    check_name("app_id", app_id)
    check_name("name", name)
    result = await session.execute(
        delete(WorkflowRow).where(WorkflowRow.app_id == app_id, WorkflowRow.name == name)
    )
    await session.commit()
    if result.rowcount == 0:
        raise NotFoundError(f"workflow {name!r} not found in application {app_id!r}")


async def _find(session: AsyncSession, app_id: str, name: str) -> WorkflowRow | None:
    return await session.scalar(
        select(WorkflowRow).where(WorkflowRow.app_id == app_id, WorkflowRow.name == name)
    )
