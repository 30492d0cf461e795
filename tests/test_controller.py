"""Controller semantics on real processes: fail-fast that starts nothing after a failure, DAG
branches, cancellation through the cancel channel, retries and step timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flowq.v1 import types_pb2
from tests.support.flows import eventually
from tests.support.proctree import alive
from tests.support.stack import Stack

S = types_pb2


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    # A slow heartbeat: a cancel that arrives within a second came through the channel.
    env = {"FLOWQ_HEARTBEAT_SECONDS": "10", "FLOWQ_LEASE_TTL_SECONDS": "30"}
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env).start()


def shell(name: str, command: str, **extra) -> dict:
    return {"name": name, "type": "shell", "properties": {"command": command}, **extra}


def steps_of(task: types_pb2.Task) -> dict[str, types_pb2.StepRun]:
    return {s.name: s for s in task.steps}


def test_fail_fast_cancels_running_siblings_and_starts_nothing_after_a_failure(
    stack: Stack, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    stack.put_workflow(
        "release",
        {
            "mode": "STEP_BY_STEP",
            "maxConcurrency": 3,
            "steps": [
                shell("fails", "sleep 0.5; echo broken; exit 4"),
                shell("slow-a", f"sleep 4; touch {marks}/a"),
                shell("slow-b", f"sleep 4; touch {marks}/b"),
                shell("fourth", f"touch {marks}/fourth"),
            ],
        },
    )
    with stack.client() as flowq:
        task = flowq.wait(flowq.exec_workflow("demo", "release").task_id, timeout=30)
    steps = steps_of(task)
    assert task.status == S.TASK_STATUS_FAILED and task.reason == "step-failed", task
    assert "fails" in task.message and "exit code 4" in task.message
    assert steps["fails"].status == S.STEP_STATUS_FAILED
    assert steps["fails"].output == "broken\n"
    assert steps["slow-a"].status == steps["slow-b"].status == S.STEP_STATUS_CANCELLED
    assert steps["fourth"].status == S.STEP_STATUS_SKIPPED and steps["fourth"].attempts == 0
    # The task ended about when the step failed, not when the siblings would have.
    failed_at = steps["fails"].finish_time.ToDatetime()
    assert (task.finish_time.ToDatetime() - failed_at).total_seconds() < 2.0
    time.sleep(4.5)  # past the moment the siblings would have written their files
    assert sorted(p.name for p in marks.iterdir()) == []


def test_dag_failure_skips_its_dependents_and_other_branches_finish(stack: Stack) -> None:
    stack.put_workflow(
        "dag",
        {
            "mode": "DAG",
            "steps": [
                shell("build", "exit 1"),
                shell("test", "echo test", dependsOn=["build"]),
                shell("publish", "echo publish", dependsOn=["test"]),
                shell("docs", "sleep 0.3; echo docs"),
                shell("site", "echo site", dependsOn=["docs"]),
            ],
        },
    )
    stack.put_workflow(
        "dag-fail-fast",
        {
            "mode": "DAG",
            "failFast": True,
            "steps": [shell("build", "exit 1"), shell("docs", "sleep 5")],
        },
    )
    with stack.client() as flowq:
        task = flowq.wait(flowq.exec_workflow("demo", "dag").task_id, timeout=30)
        fast = flowq.wait(flowq.exec_workflow("demo", "dag-fail-fast").task_id, timeout=30)
    steps = steps_of(task)
    assert task.status == S.TASK_STATUS_FAILED and task.reason == "step-failed"
    assert steps["build"].status == S.STEP_STATUS_FAILED
    assert steps["test"].status == steps["publish"].status == S.STEP_STATUS_SKIPPED
    assert steps["docs"].status == steps["site"].status == S.STEP_STATUS_SUCCEEDED
    assert steps_of(fast)["docs"].status == S.STEP_STATUS_CANCELLED
    assert (fast.finish_time.ToDatetime() - fast.start_time.ToDatetime()).total_seconds() < 4


def test_cancel_stops_a_running_shell_step_and_its_whole_process_tree(
    stack: Stack, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    stack.put_workflow(
        "long",
        {
            "steps": [
                # a child in the background and one in the foreground, both in the step's group
                shell("work", f"sleep 60 & echo $! > {pids}; sleep 60 & echo $! >> {pids}; wait"),
                shell("after", "echo after"),
            ]
        },
    )
    with stack.client() as flowq:
        task_id = flowq.exec_workflow("demo", "long").task_id
        eventually(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=30)
        children = [int(p) for p in pids.read_text().split()]
        asked = time.monotonic()
        flowq.cancel_task("demo", task_id, reason="wrong version", user="ops")
        task = flowq.wait(task_id, timeout=30)
        took = time.monotonic() - asked
    assert task.status == S.TASK_STATUS_CANCELLED, task
    assert took < 2.0, f"cancel took {took:.1f}s (heartbeat is 10s: the channel was not used)"
    assert steps_of(task)["work"].status == S.STEP_STATUS_CANCELLED
    assert steps_of(task)["after"].status == S.STEP_STATUS_SKIPPED
    assert "ops" in task.message and "wrong version" in task.message
    eventually(lambda: not any(alive(pid) for pid in children), timeout=5)


def test_retry_succeeds_on_the_third_attempt_and_a_step_timeout_fails_the_task(
    stack: Stack, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    flaky = (
        f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; "
        'echo "try $n"; [ "$n" -ge 3 ]'
    )
    stack.put_workflow(
        "flaky",
        {"steps": [shell("flaky", flaky, retry={"maxAttempts": 3, "backoffSeconds": 0.1})]},
    )
    stack.put_workflow("slow", {"steps": [shell("slow", "sleep 30", timeoutSeconds=1)]})
    with stack.client() as flowq:
        task = flowq.wait(flowq.exec_workflow("demo", "flaky").task_id, timeout=30)
        slow = flowq.wait(flowq.exec_workflow("demo", "slow").task_id, timeout=30)
        events = [e.type for e in flowq.get_task(task.task_id).events]
    step = steps_of(task)["flaky"]
    assert task.status == S.TASK_STATUS_SUCCEEDED, task
    assert step.attempts == 3 and step.output == "try 3\n"
    assert events.count("step-retrying") == 2
    assert slow.status == S.TASK_STATUS_FAILED and slow.reason == "timeout", slow
    assert steps_of(slow)["slow"].status == S.STEP_STATUS_FAILED
    assert "timeoutSeconds (1s)" in steps_of(slow)["slow"].message


def test_a_step_end_is_visible_while_its_siblings_still_run_and_events_keep_their_order(
    stack: Stack,
) -> None:
    # A step's end is kept back for the task's next write; with nothing else to write (its
    # sibling still runs) it is written on its own at once.
    sleep = lambda name, seconds, **extra: {  # noqa: E731
        "name": name, "type": "sleep", "properties": {"seconds": seconds}, **extra
    }  # fmt: skip
    stack.put_workflow(
        "branches",
        {"mode": "DAG", "steps": [sleep("quick", 0), sleep("slow", 3), sleep("after", 0, dependsOn=["quick", "slow"])]},
    )  # fmt: skip
    with stack.client() as flowq:
        task_id = flowq.exec_workflow("demo", "branches").task_id
        seen = eventually(
            lambda: (
                (t := flowq.get_task(task_id))
                and steps_of(t)["quick"].status == S.STEP_STATUS_SUCCEEDED
                and t
            ),
            timeout=10,
            what="the quick step SUCCEEDED",
        )
        assert steps_of(seen)["slow"].status == S.STEP_STATUS_RUNNING  # seen before slow ended
        task = flowq.wait(task_id, timeout=30)
    assert task.status == S.TASK_STATUS_SUCCEEDED
    events = [(e.type, e.message) for e in task.events if e.type.startswith("step-")]
    assert events.index(("step-succeeded", "slow")) < events.index(
        ("step-started", "after attempt 1")
    )
    assert events[-1] == ("step-succeeded", "after")  # written with the task's end, before it
    assert task.events[-1].type == "succeeded"


def test_a_command_that_cannot_start_says_so(stack: Stack) -> None:
    stack.put_workflow("typo", {"steps": [shell("run", ["no-such-command-xyz", "--now"])]})
    with stack.client() as flowq:
        task = flowq.wait(flowq.exec_workflow("demo", "typo").task_id, timeout=30)
    assert task.status == S.TASK_STATUS_FAILED, task
    assert "cannot start 'no-such-command-xyz': No such file or directory" in task.message
