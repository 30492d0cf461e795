"""Ownership and recovery on real processes: a crashed executor's task is recovered once its
lease expires and resumes at its first unfinished step; nothing ran twice that had finished."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from flowq.client import Client
from flowq.v1 import types_pb2
from tests.support.stack import Stack

FAST_LEASE = {
    "FLOWQ_LEASE_TTL_SECONDS": "3",
    "FLOWQ_HEARTBEAT_SECONDS": "1",
    "FLOWQ_SWEEP_INTERVAL_SECONDS": "1",
}


def three_steps(stack: Stack, ledger: Path) -> None:
    def step(name: str, pause: float) -> dict:
        return {
            "name": name,
            "type": "shell",
            "properties": {
                "command": f"echo start-{name} >> {ledger}; sleep {pause}; echo end-{name} >> {ledger}"
            },
        }

    doc = {"steps": [step("one", 0), step("two", 3), step("three", 0)]}
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/three", json=doc
        ).status_code
        == 200
    )


def wait_for_line(ledger: Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (ledger.exists() and line in ledger.read_text().split()):
        assert time.monotonic() < deadline, f"{line} never written"
        time.sleep(0.05)


def test_kill_9_mid_step_the_task_resumes_after_the_lease_expires(
    procs, database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # The executor restarts with the same FLOWQ_INSTANCE_ID, as a pod with a fixed name would:
    # its new life must not renew the dead one's lease, or the task would stay RUNNING forever.
    stack = Stack(
        procs,
        database_url,
        redis_server_url,
        key_prefix,
        extra_env={**FAST_LEASE, "FLOWQ_INSTANCE_ID": "pinned"},
    ).start()
    ledger = tmp_path / "ledger"
    three_steps(stack, ledger)
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "three")
        wait_for_line(ledger, "start-two")
        first_owner = flowq.get_task(task.task_id).owner_id
        stack.processes["executor"].kill()
        killed_at = time.monotonic()
        stack.start("executor")
        done = flowq.wait(task.task_id, timeout=60)
        recovered_in = time.monotonic() - killed_at
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED, done
    assert done.attempt == 2 and done.owner_id != first_owner
    lines = ledger.read_text().split()
    assert (
        lines.count("start-one") == 1 and lines.count("end-one") == 1
    )  # succeeded steps never run again
    assert (
        lines.count("start-two") == 2 and lines.count("end-two") == 1
    )  # the interrupted step ran again
    assert lines.count("start-three") == 1
    events = [e.type for e in done.events]
    assert "recovered" in events and events[-1] == "succeeded"
    assert recovered_in < 30, recovered_in


SWEEP_FAST = {"FLOWQ_REQUEUE_AFTER_SECONDS": "1", "FLOWQ_SWEEP_INTERVAL_SECONDS": "0.5"}


def ledger_workflow(stack: Stack, ledger: Path) -> None:
    doc = {
        "steps": [
            {
                "name": "count",
                "type": "shell",
                "properties": {"command": f"echo $FLOWQ_TASK_ID >> {ledger}"},
            }
        ]
    }
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/count", json=doc
        ).status_code
        == 200
    )


def test_exec_while_redis_is_down_is_accepted_and_runs_when_it_returns(
    procs, sqlite_database_url, key_prefix, tmp_path
) -> None:
    from flowq.localredis import LocalRedis

    with LocalRedis(tmp_path / "redis") as private_redis:
        stack = Stack(
            procs, sqlite_database_url, private_redis.url, key_prefix, extra_env=SWEEP_FAST
        ).start()
        ledger = tmp_path / "ledger"
        ledger_workflow(stack, ledger)
        with Client(stack.target()) as flowq:
            private_redis.kill()
            task = flowq.exec_workflow("demo", "count")  # stored in SQL; the XADD fails
            assert task.status == types_pb2.TASK_STATUS_QUEUED
            private_redis.restart()  # empty: the sweep must enqueue it again
            assert flowq.wait(task.task_id, timeout=60).status == types_pb2.TASK_STATUS_SUCCEEDED
    assert ledger.read_text().split() == [task.task_id]


def test_flushall_with_queued_tasks_loses_nothing(
    procs, sqlite_database_url, key_prefix, tmp_path
) -> None:
    from flowq.localredis import LocalRedis

    with LocalRedis(tmp_path / "redis") as private_redis:
        stack = Stack(
            procs, sqlite_database_url, private_redis.url, key_prefix, extra_env=SWEEP_FAST
        )
        stack.start("dispatcher", "apiserver")
        ledger = tmp_path / "ledger"
        ledger_workflow(stack, ledger)
        with Client(stack.target(), queue_target=stack.target("dispatcher")) as flowq:
            tasks = [flowq.exec_workflow("demo", "count").task_id for _ in range(5)]
            time.sleep(
                3
            )  # no executor: the entries wait, pending; the sweep must not duplicate them
            assert flowq.queue_stats().length == 5
            import redis as redis_client

            redis_client.Redis.from_url(private_redis.url).flushall()
            stack.start("executor")
            for task_id in tasks:
                assert flowq.wait(task_id, timeout=60).status == types_pb2.TASK_STATUS_SUCCEEDED
    assert sorted(ledger.read_text().split()) == sorted(tasks)
