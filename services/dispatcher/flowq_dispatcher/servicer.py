"""flowq.v1.QueueService over gRPC."""

from __future__ import annotations

import grpc
import redis.asyncio as aioredis

from flowq.db import Database
from flowq.keys import Keys
from flowq.v1 import queue_service_pb2 as pb
from flowq.v1 import queue_service_pb2_grpc as pb_grpc
from flowq_dispatcher import deadletters


class QueueServicer(pb_grpc.QueueServiceServicer):
    def __init__(self, redis: aioredis.Redis, keys: Keys, db: Database) -> None:
        self.redis = redis
        self.keys = keys
        self.db = db

    async def GetQueueStats(
        self, request: pb.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.QueueStats:
        return await deadletters.queue_stats(self.redis, self.keys)

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        items, token = await deadletters.list_dead_letters(
            self.redis, self.keys, request.page_size, request.page_token
        )
        return pb.ListDeadLettersResponse(dead_letters=items, next_page_token=token)

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayDeadLettersResponse:
        count = await deadletters.replay(
            self.redis, self.keys, self.db, list(request.ids), request.all
        )
        return pb.ReplayDeadLettersResponse(replayed=count)

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeDeadLettersResponse:
        count = await deadletters.purge(
            self.redis, self.keys, self.db, list(request.ids), request.all, request.confirm
        )
        return pb.PurgeDeadLettersResponse(purged=count)
