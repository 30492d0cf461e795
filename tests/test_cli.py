"""The flowq CLI as a user runs it: a real process against a running stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
FLOWQ = str(Path(sys.executable).parent / "flowq")


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


def flowq(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "FLOWQ_SERVER": stack.target(),
        "FLOWQ_QUEUE_SERVER": stack.target("dispatcher"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [FLOWQ, *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT
    )
    if check:
        assert done.returncode == 0, f"flowq {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def test_apply_exec_wait_get_and_tasks(stack: Stack) -> None:
    applied = flowq(stack, "apply", "-f", "examples/hello.yaml")
    assert "workflow demo/hello version 1 applied" in applied.stdout
    flowq(stack, "apply", "-f", "examples/dag.yaml")

    run = flowq(stack, "exec", "demo", "hello", "--wait")
    assert "SUCCEEDED" in run.stdout
    assert "hello from greet of task" in run.stdout  # the output tail of the first step
    task_id = run.stdout.split()[1]

    shown = flowq(stack, "get", task_id)
    assert "SUCCEEDED" in shown.stdout and "claimed" in shown.stdout
    as_json = json.loads(flowq(stack, "get", task_id, "-o", "json").stdout)
    assert as_json["taskId"] == task_id and len(as_json["steps"]) == 3

    dag = flowq(stack, "exec", "demo", "build-test-publish", "--wait")
    assert "publishing demo/build-test-publish" in dag.stdout

    listed = flowq(stack, "tasks", "demo", "--status", "succeeded")
    assert task_id in listed.stdout and listed.stdout.count("SUCCEEDED") == 2

    stats = flowq(stack, "queue", "stats")
    assert "dead_letters" in stats.stdout


def test_errors_print_the_servers_message_and_exit_non_zero(stack: Stack, tmp_path: Path) -> None:
    missing = flowq(stack, "exec", "demo", "no-such-workflow", check=False)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "no-such-workflow" in missing.stderr
    assert "Traceback" not in missing.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("appId: demo\nname: bad\nsteps:\n  - {name: x, type: teleport}\n")
    refused = flowq(stack, "apply", "-f", str(bad), check=False)
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "teleport" in refused.stderr

    no_app = tmp_path / "noapp.yaml"
    no_app.write_text("name: x\nsteps: []\n")
    refused = flowq(stack, "apply", "-f", str(no_app), check=False)
    assert refused.returncode == 1 and "--app" in refused.stderr


def test_failed_task_makes_exec_wait_exit_non_zero(stack: Stack, tmp_path: Path) -> None:
    doc = tmp_path / "fail.yaml"
    doc.write_text(
        "appId: demo\nname: fail\nsteps:\n  - {name: boom, type: shell, properties: {command: 'exit 4'}}\n"
    )
    flowq(stack, "apply", "-f", str(doc))
    run = flowq(stack, "exec", "demo", "fail", "--wait", check=False)
    assert run.returncode == 1
    assert "FAILED" in run.stdout and "exit code 4" in run.stdout


def test_dead_letter_administration_from_the_cli(
    stack: Stack, redis_server_url: str, key_prefix: str
) -> None:
    import redis

    r = redis.Redis.from_url(redis_server_url)
    for _ in range(2):
        r.xadd(
            f"{key_prefix}:dispatch", {"v": "9", "taskId": "t"}
        )  # an envelope version nobody speaks
    deadline = time.monotonic() + 20
    while (listed := flowq(stack, "dlq", "list")).stdout.count("decode-error") < 2:
        assert time.monotonic() < deadline, listed.stdout
        time.sleep(0.2)
    ids = [line.split()[0] for line in listed.stdout.splitlines() if "decode-error" in line]
    stats = flowq(stack, "queue", "stats").stdout
    assert any(line.split() == ["dead_letters", str(len(ids))] for line in stats.splitlines()), (
        stats
    )
    purged = flowq(stack, "dlq", "purge", ids[0], "--yes")
    assert "purged 1" in purged.stdout
    refused = flowq(stack, "dlq", "purge", "--all", check=False)  # asks; no input means no
    assert refused.returncode != 0
    assert "purged 1" in flowq(stack, "dlq", "purge", "--all", "--yes").stdout  # the one left
    assert "decode-error" not in flowq(stack, "dlq", "list").stdout


def test_health_exits_zero_only_when_serving(stack: Stack) -> None:
    """What compose health checks and exec probes run."""
    ready = flowq(
        stack, "health", "--server", stack.target(), "--service", "flowq.v1.WorkflowService"
    )
    assert "SERVING" in ready.stdout
    live = flowq(stack, "health", "--server", stack.target("executor"))
    assert "(liveness): SERVING" in live.stdout
    down = flowq(stack, "health", "--server", "127.0.0.1:1", "--timeout", "1", check=False)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
