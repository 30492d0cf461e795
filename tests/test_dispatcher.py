"""The dispatcher under faults, on real processes: it never loses a message, never acks what it
could not hand over, never exits on a transient error, and dead-letters what cannot run."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
import redis

from flowq.client import Client
from flowq.localredis import LocalRedis
from flowq.netutil import free_port
from flowq.v1 import types_pb2
from tests.support.flows import eventually, ledger_workflow
from tests.support.pg import LocalPostgres, create_database
from tests.support.stack import Stack

SUCCEEDED = types_pb2.TASK_STATUS_SUCCEEDED


def set_workflow_copies(db_path: str, spec: str) -> str:
    """Set every task's workflow copy to `spec` (SQLite); returns the copy one of them had.
    A copy no executor can read makes RunTask fail on the task."""
    with sqlite3.connect(db_path) as db:
        before = db.execute("SELECT workflow_spec FROM tasks").fetchone()[0]
        db.execute("UPDATE tasks SET workflow_spec = ?", (spec,))
    return before


def test_malformed_entry_is_dead_lettered_at_once_and_dispatching_goes_on(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()
    r = redis.Redis.from_url(redis_server_url, decode_responses=True)
    garbage = r.xadd(f"{key_prefix}:dispatch", {"v": "1", "taskId": "", "attempt": "x"})
    ledger = tmp_path / "ledger"
    ledger_workflow(stack, ledger)
    with stack.client() as flowq:
        task = flowq.exec_workflow("demo", "count")
        assert flowq.wait(task.task_id, timeout=30).status == SUCCEEDED
        letters = eventually(flowq.list_dead_letters, what="a dead letter")
        assert len(letters) == 1
        assert letters[0].reason == "decode-error"
        assert letters[0].original_id == garbage
        assert letters[0].attempts == 1
        assert letters[0].fields["attempt"] == "x"  # the raw fields are kept
        assert flowq.queue_stats().pending == 0
    eventually(
        lambda: "flowq_dispatch_dead_letters 1.0" in stack.metrics("dispatcher"), what="the gauge"
    )
    assert 'flowq_dispatcher_dead_lettered_total{reason="decode-error"} 1.0' in stack.metrics(
        "dispatcher"
    )
    assert ledger.read_text().split() == [task.task_id]


def test_database_down_leaves_entries_pending_and_they_run_when_it_is_back(
    procs, redis_server_url, key_prefix, tmp_path
) -> None:
    with LocalPostgres() as pg:
        stack = Stack(procs, create_database(pg.url), redis_server_url, key_prefix).start()
        ledger = tmp_path / "ledger"
        ledger_workflow(stack, ledger)
        assert stack.processes["dispatcher"].terminate() == 0
        with stack.client() as flowq:
            task = flowq.exec_workflow("demo", "count")  # in the stream, not yet read
            pg.kill()
            stack.start("dispatcher", ready=False)  # alive, not ready: the database is down
            eventually(lambda: flowq.queue_stats().pending == 1, what="the entry delivered")
            eventually(
                lambda: stack.health("dispatcher") == "NOT_SERVING", what="readiness NOT_SERVING"
            )
            time.sleep(3)  # several claim rounds with FLOWQ_CLAIM_IDLE_MS=1000
            stats = flowq.queue_stats()
            assert (stats.length, stats.pending, stats.dead_letters) == (
                1,
                1,
                0,
            )  # not acked, not dead
            assert stack.health("dispatcher", "") == "SERVING"  # liveness: the process goes on

            pg.start()
            eventually(lambda: stack.health("dispatcher") == "SERVING", what="readiness back")
            assert flowq.wait(task.task_id, timeout=60).status == SUCCEEDED
            eventually(lambda: flowq.queue_stats().length == 0, what="the entry acked")
        assert ledger.read_text().split() == [task.task_id]


def test_redis_restarted_empty_while_the_dispatcher_runs(
    procs, sqlite_database_url, key_prefix, tmp_path
) -> None:
    with LocalRedis(tmp_path / "redis") as private_redis:
        stack = Stack(procs, sqlite_database_url, private_redis.url, key_prefix).start()
        ledger = tmp_path / "ledger"
        ledger_workflow(stack, ledger)
        with stack.client() as flowq:
            first = flowq.exec_workflow("demo", "count")
            assert flowq.wait(first.task_id, timeout=30).status == SUCCEEDED

            private_redis.kill()
            eventually(
                lambda: stack.health("dispatcher") == "NOT_SERVING", what="readiness NOT_SERVING"
            )
            assert stack.health("dispatcher", "") == "SERVING"
            private_redis.restart()  # same port, no data: no stream, no consumer group
            eventually(
                lambda: stack.health("dispatcher") == "SERVING", timeout=30, what="readiness back"
            )

            second = flowq.exec_workflow("demo", "count")
            assert flowq.wait(second.task_id, timeout=30).status == SUCCEEDED
        assert stack.processes["dispatcher"].running()
        assert ledger.read_text().split() == [first.task_id, second.task_id]


def test_entry_that_always_fails_is_dead_lettered_after_max_deliveries_and_replay_runs_it(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # Requeue sweep every second: a dead-lettered task is parked, so it must not come back.
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_REQUEUE_AFTER_SECONDS": "1", "FLOWQ_SWEEP_INTERVAL_SECONDS": "0.5"},
    ).start("executor", "apiserver")
    ledger = tmp_path / "ledger"
    ledger_workflow(stack, ledger)
    db_path = sqlite_database_url.removeprefix("sqlite:///")
    with stack.client() as flowq:
        task = flowq.exec_workflow("demo", "count")
        doomed = flowq.exec_workflow("demo", "count")
        good_spec = set_workflow_copies(db_path, "{broken")  # RunTask fails on them
        stack.start("dispatcher")
        letters = eventually(
            lambda: len(flowq.list_dead_letters()) == 2 and flowq.list_dead_letters(),
            timeout=60,
            what="two dead letters",
        )
        assert {d.reason for d in letters} == {"max-deliveries"}
        assert {d.attempts for d in letters} == {5}  # FLOWQ_MAX_DELIVERIES, exactly
        assert {d.task_id for d in letters} == {task.task_id, doomed.task_id}
        assert all("INTERNAL" in d.last_error for d in letters)
        assert flowq.queue_stats().length == 0  # moved, not copied
        time.sleep(3)  # several requeue sweeps: the parked tasks stay out of the stream
        assert flowq.queue_stats().length == 0 and len(flowq.list_dead_letters()) == 2
        assert not ledger.exists()

        set_workflow_copies(db_path, good_spec)  # the cause is fixed
        by_task = {d.task_id: d.id for d in letters}
        assert flowq.replay_dead_letters([by_task[task.task_id]]) == 1
        assert flowq.wait(task.task_id, timeout=30).status == SUCCEEDED
        assert flowq.purge_dead_letters([by_task[doomed.task_id]]) == 1  # given up on for good
        gone = flowq.get_task(doomed.task_id)
        assert (gone.status, gone.reason) == (types_pb2.TASK_STATUS_FAILED, "dead-lettered")
        assert flowq.list_dead_letters() == []
    assert ledger.read_text().split() == [task.task_id]


def test_kill_9_of_one_of_two_dispatchers_loses_nothing_and_runs_each_task_once(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start(
        "dispatcher", "apiserver"
    )
    second_port = free_port()
    second = procs.start_service(
        "dispatcher",
        stack.env(
            "dispatcher",
            FLOWQ_GRPC_PORT=str(second_port),
            FLOWQ_METRICS_PORT=str(free_port()),
            FLOWQ_INSTANCE_ID="dispatcher-b",
        ),
        name="dispatcher-b",
    )
    second.wait_healthy(f"127.0.0.1:{second_port}", "flowq.v1.QueueService")
    ledger = tmp_path / "ledger"
    ledger_workflow(stack, ledger)
    with stack.client() as flowq:
        tasks = [flowq.exec_workflow("demo", "count").task_id for _ in range(8)]
        # No executor yet: each dispatcher holds what it read and reads nothing more until an
        # executor takes it; the rest of the backlog waits in the stream.
        eventually(
            lambda: sum(1 for c in flowq.queue_stats().consumers if c.pending) == 2,
            what="both dispatchers holding unacked entries",
        )
        holders = {c.name: c.pending for c in flowq.queue_stats().consumers if c.pending}
        victim = max(holders, key=holders.get)
        if victim == "dispatcher-b":
            second.kill()  # kill -9 while holding unacked entries
            survivor = stack.target("dispatcher")
        else:
            stack.processes["dispatcher"].kill()
            survivor = f"127.0.0.1:{second_port}"
        stack.start("executor")
        for task_id in tasks:
            assert flowq.wait(task_id, timeout=60).status == SUCCEEDED
    with Client(stack.target(), queue_target=survivor) as flowq:
        eventually(lambda: flowq.queue_stats().length == 0, what="every entry acked")
    assert sorted(ledger.read_text().split()) == sorted(tasks)  # each ran exactly once


@pytest.mark.parametrize("count", [200])
def test_dispatch_throughput_smoke(
    procs, sqlite_database_url, redis_server_url, key_prefix, count
) -> None:
    """Not a benchmark: many tasks at once all get dispatched and finish (no stall, no loss)."""
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()
    doc = {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}
    stack.put_workflow("noop", doc)
    with stack.client() as flowq:
        tasks = [flowq.exec_workflow("demo", "noop").task_id for _ in range(count)]
        for task_id in tasks:
            assert flowq.wait(task_id, timeout=120).status == SUCCEEDED
        eventually(lambda: flowq.queue_stats().length == 0, what="every entry acked")


def test_a_burst_beyond_the_executors_capacity_waits_in_order_not_for_the_claim_idle_time(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # An executor with room for 2 tasks, 16 tasks at once, and a claim idle time far beyond the
    # test's deadline: the entries the full executor refuses are held by the dispatcher and
    # offered again within a pause, never left for XAUTOCLAIM.
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_EXECUTOR_MAX_TASKS": "2", "FLOWQ_CLAIM_IDLE_MS": "600000"},
    ).start()
    ledger = tmp_path / "ledger"
    ledger_workflow(stack, ledger, "slow", before="sleep 0.2; ")
    with stack.client() as flowq:
        tasks = [flowq.exec_workflow("demo", "slow").task_id for _ in range(16)]
        for task_id in tasks:
            assert flowq.wait(task_id, timeout=60).status == SUCCEEDED
        eventually(lambda: flowq.queue_stats().length == 0, what="every entry acked")
    metrics = stack.metrics("dispatcher")
    refused = re.search(
        r'flowq_dispatcher_executor_calls_total\{code="RESOURCE_EXHAUSTED"\} (\S+)', metrics
    )
    assert refused and float(refused.group(1)) > 0, "the executor was never full: no test"
    assert "flowq_dispatcher_entries_held 0.0" in metrics
    assert sorted(ledger.read_text().split()) == sorted(tasks)  # each ran exactly once


def test_a_parked_task_whose_dead_letter_redis_lost_is_enqueued_again(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # A dead-lettered task is parked until someone replays or purges its letter. When the
    # letter is gone (Redis lost its data), nobody can: the sweep must enqueue it again.
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_SWEEP_INTERVAL_SECONDS": "0.5", "FLOWQ_MAX_DELIVERIES": "2"},
    ).start("executor", "apiserver")
    ledger = tmp_path / "ledger"
    ledger_workflow(stack, ledger)
    db_path = sqlite_database_url.removeprefix("sqlite:///")
    with stack.client() as flowq:
        task = flowq.exec_workflow("demo", "count")
        good_spec = set_workflow_copies(db_path, "{broken")  # RunTask fails on it
        stack.start("dispatcher")
        eventually(lambda: len(flowq.list_dead_letters()) == 1, timeout=60, what="a dead letter")
        set_workflow_copies(db_path, good_spec)
        assert flowq.get_task(task.task_id).status == types_pb2.TASK_STATUS_QUEUED  # parked
        redis.Redis.from_url(redis_server_url).delete(f"{key_prefix}:dispatch:dlq")
        done = flowq.wait(task.task_id, timeout=30)
    assert done.status == SUCCEEDED, done
    recovered = [e.message for e in done.events if e.type == "recovered"]
    assert recovered and "dead letter is gone" in recovered[0]
    assert ledger.read_text().split() == [task.task_id]
    metrics = stack.metrics("dispatcher")
    assert 'flowq_tasks_recovered_total{reason="dead-letter-lost"} 1.0' in metrics
