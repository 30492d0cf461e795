"""Rows to API messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from flowq import status
from flowq.db import StepRunRow, TaskEventRow, TaskRow, WorkflowRow
from flowq.v1 import types_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def spec_of(workflow: types_pb2.Workflow) -> dict[str, Any]:
    """The stored form of a definition: its document without identity and times."""
    body = types_pb2.Workflow()
    body.CopyFrom(workflow)
    for field in ("app_id", "name", "version", "create_time", "update_time"):
        body.ClearField(field)
    return json_format.MessageToDict(body)


def workflow_message(row: WorkflowRow) -> types_pb2.Workflow:
    message = json_format.ParseDict(row.spec, types_pb2.Workflow(), ignore_unknown_fields=True)
    message.app_id = row.app_id
    message.name = row.name
    message.version = row.version
    message.create_time.CopyFrom(timestamp(row.created_at))
    message.update_time.CopyFrom(timestamp(row.updated_at))
    return message


def task_message(
    row: TaskRow, steps: Sequence[StepRunRow] = (), events: Sequence[TaskEventRow] = ()
) -> types_pb2.Task:
    task = types_pb2.Task(
        task_id=row.id,
        app_id=row.app_id,
        workflow_name=row.workflow_name,
        status=status.task_status_to_proto(row.status),
        reason=row.reason,
        message=row.message,
        owner_id=row.owner_id or "",
        attempt=row.attempt,
        epoch=row.epoch,
        cancel_requested=row.cancel_requested,
        idempotency_key=row.idempotency_key or "",
        create_time=timestamp(row.created_at),
        start_time=timestamp(row.started_at),
        finish_time=timestamp(row.finished_at),
        update_time=timestamp(row.updated_at),
    )
    for step in steps:
        task.steps.append(
            types_pb2.StepRun(
                name=step.name,
                type=step.type,
                status=status.step_status_to_proto(step.status),
                attempts=step.attempts,
                message=step.message,
                output=step.output,
                start_time=timestamp(step.started_at),
                finish_time=timestamp(step.finished_at),
            )
        )
    for event in events:
        task.events.append(
            types_pb2.TaskEvent(
                time=timestamp(event.at),
                type=event.type,
                message=event.message,
                owner_id=event.owner_id or "",
                attempt=event.attempt,
            )
        )
    return task
