"""flowq.v1.WorkflowService over gRPC: opens a session per call and calls the use cases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import redis.asyncio as aioredis
from google.protobuf import empty_pb2

from flowq.changes import ChangeListener
from flowq.db import Database
from flowq.keys import Keys
from flowq.v1 import types_pb2
from flowq.v1 import workflow_service_pb2 as pb
from flowq.v1 import workflow_service_pb2_grpc as pb_grpc
from flowq_apiserver import tasks, workflows


class WorkflowServicer(pb_grpc.WorkflowServiceServicer):
    def __init__(
        self,
        db: Database,
        redis: aioredis.Redis,
        keys: Keys,
        changes: ChangeListener,
        *,
        shell_allowed: bool,
    ) -> None:
        self.changes = changes
        self.db = db
        self.redis = redis
        self.keys = keys
        self.shell_allowed = shell_allowed

    async def PutWorkflow(
        self, request: pb.PutWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Workflow:
        async with self.db.session() as session:
            return await workflows.put_workflow(
                session,
                request.app_id,
                request.name,
                request.workflow,
                shell_allowed=self.shell_allowed,
            )

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Workflow:
        async with self.db.session() as session:
            return await workflows.get_workflow(session, request.app_id, request.name)

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowsResponse:
        async with self.db.session() as session:
            items, token = await workflows.list_workflows(
                session, request.app_id, request.page_size, request.page_token
            )
        return pb.ListWorkflowsResponse(workflows=items, next_page_token=token)

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.session() as session:
            await workflows.delete_workflow(session, request.app_id, request.name)
        return empty_pb2.Empty()

    async def ExecWorkflow(
        self, request: pb.ExecWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Task:
        async with self.db.session() as session:
            return await tasks.exec_workflow(
                session,
                self.redis,
                self.keys,
                request.app_id,
                request.workflow_name,
                request.idempotency_key,
                shell_allowed=self.shell_allowed,
            )

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Task:
        async with self.db.session() as session:
            return await tasks.cancel_task(
                session,
                self.redis,
                self.keys,
                request.app_id,
                request.task_id,
                request.reason,
                request.user,
            )

    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Task:
        async with self.db.session() as session:
            return await tasks.get_task(session, request.task_id)

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        async with self.db.session() as session:
            items, token = await tasks.list_tasks(
                session,
                request.app_id,
                request.workflow_name,
                request.status,
                request.page_size,
                request.page_token,
            )
        return pb.ListTasksResponse(tasks=items, next_page_token=token)

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.Task]:
        async for task in tasks.watch_task(self.db.session, self.changes, request.task_id):
            yield task
