"""Ownership and recovery on real processes: a crashed executor's task is recovered once its
lease expires and resumes at its first unfinished step; nothing ran twice that had finished."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from flowq.client import Client
from flowq.v1 import types_pb2
from tests.support.flows import ledger_workflow
from tests.support.pg import LocalPostgres, create_database
from tests.support.proctree import alive
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
    stack.put_workflow("three", doc)


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


def test_executor_sigterm_hands_its_task_to_another_without_waiting_for_the_lease(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # A long lease (60 s): only a hand-back can make the other executor take over quickly.
    env = {
        "FLOWQ_LEASE_TTL_SECONDS": "60",
        "FLOWQ_HEARTBEAT_SECONDS": "1",
        "FLOWQ_SHUTDOWN_GRACE_SECONDS": "2",
    }
    stack = Stack(
        procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env, executors=2
    ).start()
    ledger = tmp_path / "ledger"
    three_steps(stack, ledger)
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "three")
        wait_for_line(ledger, "start-two")
        owner = flowq.get_task(task.task_id).owner_id
        name, process = stack.owner_process(owner)
        stopped_at = time.monotonic()
        assert process.terminate(timeout=30) == 0, process.log_tail()
        done = flowq.wait(task.task_id, timeout=40)
        taken_over_in = time.monotonic() - stopped_at
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED, done
    assert not done.owner_id.startswith(f"{name}-{stack.grpc_ports[name]}-"), (
        "the stopped executor finished it?"
    )
    assert done.attempt == 1  # a hand-back at shutdown is not a failed attempt
    assert "released" in [e.type for e in done.events]
    assert taken_over_in < 20, taken_over_in  # far less than the 60 s lease
    lines = ledger.read_text().split()
    assert lines.count("start-one") == 1 and lines.count("start-three") == 1
    assert lines.count("start-two") == 2 and lines.count("end-two") == 1


def test_a_paused_owner_is_fenced_off_and_cannot_change_the_task(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    stack = Stack(
        procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=FAST_LEASE, executors=2
    ).start()
    ledger = tmp_path / "ledger"
    three_steps(stack, ledger)
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "three")
        wait_for_line(ledger, "start-two")
        first_owner = flowq.get_task(task.task_id).owner_id
        _, paused = stack.owner_process(first_owner)
        paused.pause()  # SIGSTOP: its lease expires, the task is recovered and run elsewhere
        try:
            deadline = time.monotonic() + 30
            while flowq.get_task(task.task_id).owner_id in ("", first_owner):
                assert time.monotonic() < deadline, "never recovered"
                time.sleep(0.1)
        finally:
            paused.resume()  # SIGCONT: the old owner wakes up mid-step, holding a stale fence
        done = flowq.wait(task.task_id, timeout=60)
        time.sleep(3)  # give the woken owner time to try its writes
        after = flowq.get_task(task.task_id)
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
    assert after.owner_id != first_owner and after.status == done.status
    assert after.update_time == done.update_time  # nothing changed after the end
    types = [e.type for e in after.events]
    recovered = types.index("recovered")
    late = [
        e for e in after.events[recovered:] if e.owner_id == first_owner and e.type != "recovered"
    ]
    assert late == [], f"the fenced-off owner wrote after losing the task: {late}"
    lines = ledger.read_text().split()
    assert lines.count("start-three") == 1  # the stale owner never started a later step
    assert lines.count("start-one") == 1


def test_two_executors_racing_for_one_task_never_both_win(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    import concurrent.futures

    import grpc

    from flowq.v1 import executor_service_pb2 as epb
    from flowq.v1 import executor_service_pb2_grpc as epb_grpc

    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix, executors=2)
    stack.start("executor", "executor-2", "apiserver")  # no dispatcher: the test plays both of them
    doc = {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}
    stack.put_workflow("nop", doc)
    stubs = [
        epb_grpc.ExecutorServiceStub(grpc.insecure_channel(stack.target(name)))
        for name in ("executor", "executor-2")
    ]
    with Client(stack.target()) as flowq, concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(25):
            task_id = flowq.exec_workflow("demo", "nop").task_id
            replies = list(
                pool.map(
                    lambda stub, task_id=task_id: stub.RunTask(
                        epb.RunTaskRequest(task_id=task_id, attempt=1), timeout=10
                    ),
                    stubs,
                )
            )
            assert sorted(r.accepted for r in replies) == [False, True], replies
            loser = next(r for r in replies if not r.accepted)
            assert loser.reason in ("owned", "terminal"), loser
            done = flowq.wait(task_id, timeout=30)
            assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
            assert [e.type for e in done.events].count("claimed") == 1


def test_rolling_restart_of_every_service_cancels_nothing(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    env = {**FAST_LEASE, "FLOWQ_SHUTDOWN_GRACE_SECONDS": "3"}
    stack = Stack(
        procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env, executors=2
    ).start()
    doc = {
        "steps": [
            {"name": f"s{i}", "type": "sleep", "properties": {"seconds": 1}} for i in range(4)
        ]
    }
    stack.put_workflow("slow", doc)
    with Client(stack.target()) as flowq:
        tasks = [flowq.exec_workflow("demo", "slow").task_id for _ in range(10)]
        time.sleep(1.5)  # they are running
        for name in ("dispatcher", "executor", "executor-2"):
            assert stack.processes[name].terminate(timeout=30) == 0
            stack.start(name)  # same ports, same instance id, a new life
        finished = [flowq.wait(t, timeout=90) for t in tasks]
    assert [t.status for t in finished] == [types_pb2.TASK_STATUS_SUCCEEDED] * 10, [
        (t.task_id, t.status, t.reason, t.message) for t in finished
    ]
    assert all(t.reason == "" for t in finished)


def test_a_task_past_its_workflow_timeout_fails_with_timeout(
    procs, database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    stack = Stack(procs, database_url, redis_server_url, key_prefix, extra_env=FAST_LEASE).start()
    doc = {
        "timeoutSeconds": 4,
        "steps": [
            {"name": "long", "type": "sleep", "properties": {"seconds": 60}},
            {"name": "after", "type": "sleep", "properties": {"seconds": 0}},
        ],
    }
    stack.put_workflow("late", doc)
    with Client(stack.target()) as flowq:
        # The owner is alive: it stops the task itself at the deadline.
        live = flowq.wait(flowq.exec_workflow("demo", "late").task_id, timeout=30)
        assert (live.status, live.reason) == (types_pb2.TASK_STATUS_FAILED, "timeout")
        assert "timeoutSeconds" in live.message
        assert [s.status for s in live.steps] == [
            types_pb2.STEP_STATUS_CANCELLED,
            types_pb2.STEP_STATUS_SKIPPED,
        ]

        # The owner is dead (kill -9) and no executor is left: the sweep fails it at the deadline.
        doc["timeoutSeconds"] = 5
        stack.put_workflow("late5", doc)
        task = flowq.exec_workflow("demo", "late5")
        deadline = time.monotonic() + 20
        while flowq.get_task(task.task_id).steps[0].status != types_pb2.STEP_STATUS_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stack.processes["executor"].kill()
        dead = flowq.wait(task.task_id, timeout=30)
        assert (dead.status, dead.reason) == (types_pb2.TASK_STATUS_FAILED, "timeout"), dead
        assert "timeoutSeconds" in dead.message
        # failed where it ran, or first recovered to QUEUED by the lease sweep and failed there
        assert dead.steps[0].status in (types_pb2.STEP_STATUS_FAILED, types_pb2.STEP_STATUS_SKIPPED)
        assert dead.steps[1].status == types_pb2.STEP_STATUS_SKIPPED

        # Queued past its deadline with no executor at all: failed as well, never run.
        queued = flowq.exec_workflow("demo", "late")
        never = flowq.wait(queued.task_id, timeout=30)
        assert (never.status, never.reason) == (types_pb2.TASK_STATUS_FAILED, "timeout")
        assert "waited to run" in never.message and never.owner_id == ""


def test_kill_9_with_a_second_executor_up_the_other_finishes_the_task(
    procs, database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    stack = Stack(
        procs, database_url, redis_server_url, key_prefix, extra_env=FAST_LEASE, executors=2
    ).start()
    ledger = tmp_path / "ledger"
    three_steps(stack, ledger)
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "three")
        wait_for_line(ledger, "start-two")
        name, process = stack.owner_process(flowq.get_task(task.task_id).owner_id)
        process.kill()
        killed_at = time.monotonic()
        done = flowq.wait(task.task_id, timeout=60)
        took = time.monotonic() - killed_at
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
    assert not done.owner_id.startswith(f"{name}-{stack.grpc_ports[name]}-")
    # lease TTL (3 s) + a sweep (1 s) + the rest of the work (step two again: 3 s) + slack
    assert took < 20, took
    lines = ledger.read_text().split()
    assert (lines.count("start-one"), lines.count("start-two"), lines.count("start-three")) == (
        1,
        2,
        1,
    )


def test_an_owner_lost_too_often_fails_the_task_with_owner_lost(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    env = {**FAST_LEASE, "FLOWQ_MAX_TASK_ATTEMPTS": "1"}
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env).start()
    ledger = tmp_path / "ledger"
    three_steps(stack, ledger)
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "three")
        wait_for_line(ledger, "start-two")
        stack.processes["executor"].kill()
        done = flowq.wait(task.task_id, timeout=30)
    assert (done.status, done.reason) == (types_pb2.TASK_STATUS_FAILED, "owner-lost")
    assert "gave up after 1 attempts" in done.message
    assert [s.status for s in done.steps] == [
        types_pb2.STEP_STATUS_SUCCEEDED,
        types_pb2.STEP_STATUS_FAILED,
        types_pb2.STEP_STATUS_SKIPPED,
    ]


def test_a_database_outage_mid_task_hands_it_back_keeping_the_steps_that_succeeded(
    procs, redis_server_url, key_prefix, tmp_path
) -> None:
    # Step one ends while PostgreSQL is down: its end is kept back for the next write (step
    # two's start), which fails. The hand-back, retried until the database returns, must
    # record step one as SUCCEEDED, so that it never runs again.
    ledger = tmp_path / "ledger"
    with LocalPostgres() as pg:
        stack = Stack(procs, create_database(pg.url), redis_server_url, key_prefix).start()
        one = f"echo start-one >> {ledger}; sleep 2; echo end-one >> {ledger}"
        two = f"echo start-two >> {ledger}"
        stack.put_workflow(
            "outage",
            {
                "steps": [
                    {"name": "one", "type": "shell", "properties": {"command": one}},
                    {"name": "two", "type": "shell", "properties": {"command": two}},
                ]
            },
        )
        with Client(stack.target()) as flowq:
            task = flowq.exec_workflow("demo", "outage")
            wait_for_line(ledger, "start-one")
            pg.kill()
            wait_for_line(ledger, "end-one")
            time.sleep(1.5)  # step two's start, carrying step one's end, fails meanwhile
            pg.start()
            done = flowq.wait(task.task_id, timeout=90)
    steps = {s.name: s for s in done.steps}
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED, done
    assert done.attempt == 2, done  # handed back once, after the executor error
    assert steps["one"].status == types_pb2.STEP_STATUS_SUCCEEDED and steps["one"].attempts == 1
    assert ledger.read_text().split() == ["start-one", "end-one", "start-two"]


def test_a_shell_step_dies_with_its_executor_even_outside_a_container(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # kill -9 of the executor process alone (not its tree, as a container's end would do): the
    # step's shell must die at once, not finish its work beside the run that resumes it.
    # A long lease keeps recovery out of the picture for the test's length.
    env = {"FLOWQ_LEASE_TTL_SECONDS": "60", "FLOWQ_HEARTBEAT_SECONDS": "1"}
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env).start()
    ledger, pid_file = tmp_path / "ledger", tmp_path / "pid"
    command = f"echo $$ > {pid_file}; echo start >> {ledger}; sleep 5; echo end >> {ledger}"
    stack.put_workflow(
        "orphan", {"steps": [{"name": "s", "type": "shell", "properties": {"command": command}}]}
    )
    with Client(stack.target()) as flowq:
        flowq.exec_workflow("demo", "orphan")
        wait_for_line(ledger, "start")
        shell_pid = int(pid_file.read_text())
        os.kill(stack.processes["executor"].pid, signal.SIGKILL)
        deadline = time.monotonic() + 2  # the shell would live 5 s more
        while alive(shell_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(shell_pid), "the step's shell outlived its executor"
    assert ledger.read_text().split() == ["start"]  # killed, it never gets to write "end"
