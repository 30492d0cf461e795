"""flowq.v1.ExecutorService over gRPC."""

from __future__ import annotations

import grpc

from flowq.v1 import executor_service_pb2 as pb
from flowq.v1 import executor_service_pb2_grpc as pb_grpc
from flowq_executor import cleanup
from flowq_executor.runner import TaskRunner


class ExecutorServicer(pb_grpc.ExecutorServiceServicer):
    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    async def RunTask(
        self, request: pb.RunTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunTaskResponse:
        decision = await self.runner.run_task(request.task_id)
        return pb.RunTaskResponse(
            accepted=decision.accepted,
            reason=decision.reason,
            owner_id=decision.owner_id,
            epoch=decision.epoch,
        )

    async def CleanTask(
        self, request: pb.CleanTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CleanTaskResponse:
        deleted = await cleanup.clean_task(self.runner.db, self.runner.kube, request.task_id)
        return pb.CleanTaskResponse(deleted=deleted)

    async def GetExecutorStatus(
        self, request: pb.GetExecutorStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecutorStatus:
        running = self.runner.running()
        return pb.ExecutorStatus(
            instance_id=self.runner.instance_id,
            running_tasks=len(running),
            capacity=self.runner.capacity,
            draining=self.runner.draining,
            task_ids=running,
        )
