"""A small typed client of flowq's public gRPC API, for other services, scripts and the CLI.

with Client("127.0.0.1:50051") as flowq:
    flowq.put_workflow(load_workflows(open("hello.yaml").read())[0])
    task = flowq.exec_workflow("demo", "hello")
    done = flowq.wait(task.task_id, timeout=60)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from flowq import status as statuses
from flowq.errors import FlowqError, InvalidArgumentError
from flowq.grpcutil import CHANNEL_OPTIONS
from flowq.tls import TlsFiles, channel
from flowq.v1 import (
    queue_service_pb2 as queue_pb,
)
from flowq.v1 import (
    queue_service_pb2_grpc as queue_grpc,
)
from flowq.v1 import (
    types_pb2,
)
from flowq.v1 import (
    workflow_service_pb2 as pb,
)
from flowq.v1 import (
    workflow_service_pb2_grpc as pb_grpc,
)

Task = types_pb2.Task
Workflow = types_pb2.Workflow


class ClientError(FlowqError):
    """A call failed; `code` is the gRPC status name and `message` the server's words."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.status = code
        self.retryable = code in (
            "UNAVAILABLE",
            "RESOURCE_EXHAUSTED",
            "DEADLINE_EXCEEDED",
            "ABORTED",
        )

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _error(exc: grpc.RpcError) -> ClientError:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    message = exc.details() if hasattr(exc, "details") else str(exc)
    if code == "UNAVAILABLE" and (
        "connect" in (message or "").lower() or "refused" in (message or "").lower()
    ):
        message = f"{message} (is the server running? check FLOWQ_SERVER)"
    field = None
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == "grpc-status-details-bin":
            detail = status_pb2.Status.FromString(value)
            for anything in detail.details:
                bad = error_details_pb2.BadRequest()
                if anything.Unpack(bad) and bad.field_violations:
                    field = bad.field_violations[0].field
    return ClientError(code, message or code, field)


def load_workflows(text: str, app_id: str | None = None) -> list[Workflow]:
    """Parse one or more workflow documents (YAML or JSON; camelCase or snake_case keys)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"not valid YAML or JSON: {exc}") from None
    workflows = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise InvalidArgumentError(f"document {i + 1}: expected a mapping with name and steps")
        try:
            workflow = json_format.ParseDict(doc, Workflow())
        except json_format.ParseError as exc:
            raise InvalidArgumentError(f"document {i + 1}: {exc}") from None
        if app_id:
            workflow.app_id = app_id
        if not workflow.app_id:
            raise InvalidArgumentError(
                f"document {i + 1}: no application: set appId in the file or pass --app"
            )
        workflows.append(workflow)
    if not workflows:
        raise InvalidArgumentError("no workflow document found")
    return workflows


class Client:
    """Blocking client of flowq.v1.WorkflowService (apiserver) and QueueService (dispatcher)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        queue_target: str = "127.0.0.1:50052",
        timeout: float = 30.0,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls or TlsFiles()
        self._channel = channel(target, self._tls, CHANNEL_OPTIONS)
        self._stub = pb_grpc.WorkflowServiceStub(self._channel)
        self._queue_target = queue_target
        self._queue_channel: grpc.Channel | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        if self._queue_channel is not None:
            self._queue_channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    # -- workflows ------------------------------------------------------------------------

    def put_workflow(self, workflow: Workflow) -> Workflow:
        return self._call(
            self._stub.PutWorkflow,
            pb.PutWorkflowRequest(app_id=workflow.app_id, name=workflow.name, workflow=workflow),
        )

    def get_workflow(self, app_id: str, name: str) -> Workflow:
        return self._call(self._stub.GetWorkflow, pb.GetWorkflowRequest(app_id=app_id, name=name))

    def list_workflows(self, app_id: str) -> Iterator[Workflow]:
        token = ""
        while True:
            page = self._call(
                self._stub.ListWorkflows, pb.ListWorkflowsRequest(app_id=app_id, page_token=token)
            )
            yield from page.workflows
            token = page.next_page_token
            if not token:
                return

    def delete_workflow(self, app_id: str, name: str) -> None:
        self._call(self._stub.DeleteWorkflow, pb.DeleteWorkflowRequest(app_id=app_id, name=name))

    # -- tasks ----------------------------------------------------------------------------

    def exec_workflow(self, app_id: str, workflow_name: str, idempotency_key: str = "") -> Task:
        return self._call(
            self._stub.ExecWorkflow,
            pb.ExecWorkflowRequest(
                app_id=app_id, workflow_name=workflow_name, idempotency_key=idempotency_key
            ),
        )

    def cancel_task(self, app_id: str, task_id: str, reason: str = "", user: str = "") -> Task:
        return self._call(
            self._stub.CancelTask,
            pb.CancelTaskRequest(app_id=app_id, task_id=task_id, reason=reason, user=user),
        )

    def get_task(self, task_id: str) -> Task:
        return self._call(self._stub.GetTask, pb.GetTaskRequest(task_id=task_id))

    def list_tasks(
        self,
        app_id: str = "",
        *,
        workflow_name: str = "",
        status: str | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """Newest first, at most `limit` tasks; `status` is QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        status_value = statuses.task_status_to_proto(status.upper()) if status else 0
        out: list[Task] = []
        token = ""
        while len(out) < limit:
            page = self._call(
                self._stub.ListTasks,
                pb.ListTasksRequest(
                    app_id=app_id,
                    workflow_name=workflow_name,
                    status=status_value,
                    page_size=min(500, limit - len(out)),
                    page_token=token,
                ),
            )
            out.extend(page.tasks)
            token = page.next_page_token
            if not token:
                break
        return out[:limit]

    def watch_task(self, task_id: str, timeout: float | None = None) -> Iterator[Task]:
        """The task now and on every change, until it ends (or `timeout` seconds pass)."""
        try:
            yield from self._stub.WatchTask(
                pb.WatchTaskRequest(task_id=task_id), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Block until the task ends; ClientError DEADLINE_EXCEEDED after `timeout` seconds."""
        last = None
        for task in self.watch_task(task_id, timeout):
            last = task
        if (
            last is None
            or statuses.task_status_from_proto(last.status) not in statuses.TERMINAL_TASK_STATUSES
        ):
            raise ClientError("DEADLINE_EXCEEDED", f"task {task_id} did not end within {timeout}s")
        return last

    # -- queue (dispatcher) -----------------------------------------------------------------

    @property
    def _queue(self) -> queue_grpc.QueueServiceStub:
        if self._queue_channel is None:
            self._queue_channel = channel(self._queue_target, self._tls, CHANNEL_OPTIONS)
        return queue_grpc.QueueServiceStub(self._queue_channel)

    def queue_stats(self) -> queue_pb.QueueStats:
        return self._call(self._queue.GetQueueStats, queue_pb.GetQueueStatsRequest())

    def list_dead_letters(self, limit: int = 50) -> list[queue_pb.DeadLetter]:
        page = self._call(
            self._queue.ListDeadLetters, queue_pb.ListDeadLettersRequest(page_size=limit)
        )
        return list(page.dead_letters)

    def replay_dead_letters(self, ids: list[str] | None = None, everything: bool = False) -> int:
        return self._call(
            self._queue.ReplayDeadLetters,
            queue_pb.ReplayDeadLettersRequest(ids=ids or [], all=everything),
        ).replayed

    def purge_dead_letters(self, ids: list[str] | None = None, everything: bool = False) -> int:
        return self._call(
            self._queue.PurgeDeadLetters,
            queue_pb.PurgeDeadLettersRequest(ids=ids or [], all=everything, confirm="purge"),
        ).purged
