"""Task and step status names: one place for what is terminal and how SQL spells them.

SQL stores the short names (QUEUED, RUNNING, ...); the API uses the proto enums
(TASK_STATUS_QUEUED, ...). The two convert here and nowhere else.
"""

from __future__ import annotations

from flowq.v1 import types_pb2

QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"

TASK_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_TASK_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})

PENDING = "PENDING"
SKIPPED = "SKIPPED"
STEP_STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELLED)
TERMINAL_STEP_STATUSES = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})

# Reasons a task failed or was cancelled.
REASON_STEP_FAILED = "step-failed"
REASON_TIMEOUT = "timeout"
REASON_CANCELLED = "cancelled"
REASON_OWNER_LOST = "owner-lost"
REASON_INVALID = "invalid-workflow"
REASON_EXECUTOR_ERROR = "executor-error"
REASON_DEAD_LETTERED = "dead-lettered"


def task_status_to_proto(name: str) -> int:
    return types_pb2.TaskStatus.Value(f"TASK_STATUS_{name}")


def task_status_from_proto(value: int) -> str | None:
    """The SQL name of a proto TaskStatus; None for UNSPECIFIED."""
    name = types_pb2.TaskStatus.Name(value).removeprefix("TASK_STATUS_")
    return None if name == "UNSPECIFIED" else name


def step_status_to_proto(name: str) -> int:
    return types_pb2.StepStatus.Value(f"STEP_STATUS_{name}")
