"""SQL: the source of truth for workflows, tasks, step runs, task events and executor leases."""

from flowq.db.engine import Database, async_url, sync_url, update
from flowq.db.models import (
    Base,
    ExecutorLeaseRow,
    StepRunRow,
    TaskEventRow,
    TaskRow,
    WorkflowRow,
    new_task_id,
    utcnow,
)

__all__ = [
    "Base",
    "Database",
    "ExecutorLeaseRow",
    "StepRunRow",
    "TaskEventRow",
    "TaskRow",
    "WorkflowRow",
    "async_url",
    "new_task_id",
    "sync_url",
    "update",
    "utcnow",
]
