"""Liveness tells the truth and stop() leaves nothing behind: a loop that stops making
progress is reported wedged, and a service run in this process and stopped leaves no asyncio
task and no thread of its own."""

from __future__ import annotations

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowq.config import Settings
from flowq.lifecycle import Runner
from flowq.netutil import free_ports
from flowq.supervise import Supervisor, beat
from flowq_executor.app import Executor


async def test_a_loop_that_stops_beating_is_wedged_and_one_that_beats_is_not() -> None:
    loops = Supervisor(backoff_max_seconds=1)

    async def busy() -> None:
        while True:
            beat()
            await asyncio.sleep(0.05)

    async def hangs() -> None:
        beat()
        await asyncio.Event().wait()  # awaits something that never comes

    loops.spawn("busy", busy, stall_after=0.3)
    loops.spawn("hangs", hangs, stall_after=0.3)
    loops.spawn("unwatched", hangs, watched=False)
    assert loops.wedged() == []
    await asyncio.sleep(0.6)
    assert loops.wedged() == ["hangs"]
    assert loops.alive()  # alive, yet making no progress: only the beat tells
    await loops.stop()
    assert loops.wedged() == []


async def _serving(target: str, timeout: float = 30.0) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service="flowq.v1.ExecutorService"),
                        timeout=1,
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)


async def test_a_stopped_service_leaves_no_task_and_no_thread(
    sqlite_database_url: str, redis_server_url: str, key_prefix: str
) -> None:
    from flowq.db.migrate import upgrade

    await asyncio.to_thread(upgrade, sqlite_database_url)
    grpc_port, metrics_port = free_ports(2)
    settings = Settings.from_env(
        "executor",
        {
            "FLOWQ_DATABASE_URL": sqlite_database_url,
            "FLOWQ_REDIS_URL": redis_server_url,
            "FLOWQ_KEY_PREFIX": key_prefix,
            "FLOWQ_GRPC_PORT": str(grpc_port),
            "FLOWQ_METRICS_PORT": str(metrics_port),
            "FLOWQ_SHUTDOWN_GRACE_SECONDS": "3",
        },
    )
    threads_before = set(threading.enumerate())
    tasks_before = asyncio.all_tasks()
    runner = Runner(Executor(settings))
    run = asyncio.create_task(runner.run())
    await _serving(f"127.0.0.1:{grpc_port}")
    runner.request_stop()
    assert await asyncio.wait_for(run, 30) == 0

    leftover_tasks = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    assert leftover_tasks == set(), leftover_tasks

    def leftover_threads() -> list[threading.Thread]:
        # The event loop's own default executor ("asyncio_N") belongs to the loop, not to the
        # service; every other thread the service started must be gone.
        return [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not t.name.startswith("asyncio_")
        ]

    async with asyncio.timeout(10):
        while leftover_threads():  # noqa: ASYNC110 - threads end in their own time; poll them
            await asyncio.sleep(0.1)
