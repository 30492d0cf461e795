"""Bearer-token authentication on real processes: every gRPC call and REST request needs a
token once FLOWQ_API_TOKENS is set, health and reflection stay open, the dispatcher reaches
executors with FLOWQ_INTERNAL_TOKEN, and no token ever reaches a log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format

from flowq.client import Client, ClientError
from flowq.v1 import executor_service_pb2 as epb
from flowq.v1 import executor_service_pb2_grpc as epb_grpc
from flowq.v1 import types_pb2
from flowq.v1.types_pb2 import Workflow
from tests.support.flows import eventually
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
FLOWQ = str(ROOT / ".venv" / "bin" / "flowq")
TOKEN_A = "tok-a-0123456789abcdef"
TOKEN_B = "tok-b-fedcba9876543210"
INTERNAL = "internal-5f2c9d0e7a1b4c3d"
NOOP = {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path) -> Stack:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# API tokens, one per line\n{TOKEN_A}\n{TOKEN_B}  # the CI robot\n")
    env = {
        "FLOWQ_API_TOKENS": f"@{tokens}",
        "FLOWQ_INTERNAL_TOKEN": INTERNAL,
        "FLOWQ_METRICS_AUTH": "true",
    }
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env).start()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_rest_and_grpc_need_a_token_and_a_task_runs_end_to_end_with_one(stack: Stack) -> None:
    url = f"{stack.base_url}/api/v1/applications/demo/workflows/noop"
    missing = httpx.put(url, json=NOOP)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["code"] == 16 and "bearer token" in missing.json()["message"]
    wrong = httpx.put(url, json=NOOP, headers=bearer("not-the-right-token-at-all"))
    assert wrong.status_code == 401 and "not accepted" in wrong.json()["message"]
    malformed = httpx.put(url, json=NOOP, headers={"authorization": TOKEN_A})
    assert malformed.status_code == 401 and "Bearer <token>" in malformed.json()["message"]
    assert httpx.put(url, json=NOOP, headers=bearer(TOKEN_B)).status_code == 200

    with stack.client() as anonymous:
        with pytest.raises(ClientError) as err:
            anonymous.list_tasks("demo")
        assert err.value.code == "UNAUTHENTICATED"
        with pytest.raises(ClientError) as err:
            anonymous.queue_stats()  # the dispatcher's QueueService too
        assert err.value.code == "UNAUTHENTICATED"

    with Client(stack.target(), queue_target=stack.target("dispatcher"), token=TOKEN_A) as flowq:
        # The dispatcher hands the task to the executor with the internal token.
        done = flowq.wait(flowq.exec_workflow("demo", "noop").task_id, timeout=30)
        assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
        assert flowq.queue_stats().length >= 0

    executor = stack.target("executor")
    with grpc.insecure_channel(executor) as channel:
        stub = epb_grpc.ExecutorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.GetExecutorStatus(epb.GetExecutorStatusRequest(), timeout=10)
        assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = stub.GetExecutorStatus(
            epb.GetExecutorStatusRequest(), timeout=10, metadata=tuple(bearer(INTERNAL).items())
        )
        assert status.capacity == 32


def test_health_and_reflection_stay_open_metrics_need_a_token_when_asked(stack: Stack) -> None:
    for role in ("apiserver", "dispatcher", "executor"):
        assert stack.health(role) == "SERVING"  # no token
    listed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "grpcurl"), "-plaintext", stack.target(), "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "flowq.v1.WorkflowService" in listed.stdout, listed.stderr
    assert httpx.get(f"{stack.base_url}/healthz").status_code == 200
    for url in (
        f"{stack.base_url}/metrics",
        f"http://127.0.0.1:{stack.metrics_ports['dispatcher']}/metrics",
    ):
        refused = httpx.get(url)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        allowed = httpx.get(url, headers=bearer(TOKEN_A))
        assert allowed.status_code == 200 and "flowq_auth_failures_total" in allowed.text


def test_the_cli_sends_its_token_and_no_token_reaches_a_log(stack: Stack) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "FLOWQ_SERVER": stack.target(),
        "FLOWQ_QUEUE_SERVER": stack.target("dispatcher"),
    }
    run = lambda *args, **extra: subprocess.run(  # noqa: E731
        [FLOWQ, *args], capture_output=True, text=True, env={**env, **extra}, timeout=60, cwd=ROOT
    )
    refused = run("tasks", "demo")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert "FLOWQ_TOKEN" in refused.stderr  # says what to do
    assert run("tasks", "demo", FLOWQ_TOKEN=TOKEN_A).returncode == 0
    assert run("--token", TOKEN_B, "queue", "stats").returncode == 0

    logs = "".join(p.log_text() for p in stack.processes.values())
    assert "tokens>" in logs  # the settings were logged, with the tokens masked
    for secret in (TOKEN_A, TOKEN_B, INTERNAL):
        assert secret not in logs


def test_a_bad_token_setting_stops_the_service_without_echoing_it() -> None:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "flowq-apiserver")],
        env={"PATH": "/usr/bin:/bin", "FLOWQ_API_TOKENS": "short-secret"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "FLOWQ_API_TOKENS=<hidden>: a token needs at least 16 characters" in done.stderr
    assert "short-secret" not in done.stderr


def test_an_executor_refusing_the_dispatchers_token_loses_no_task(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    """A configuration mistake is not the task's fault: nothing is dead-lettered, the
    dispatcher says what to fix, and the task runs once the tokens agree."""
    env = {
        "FLOWQ_API_TOKENS": TOKEN_A,
        "FLOWQ_INTERNAL_TOKEN": INTERNAL,
        "FLOWQ_MAX_DELIVERIES": "2",
    }
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env)
    stack.start("executor", "apiserver")
    wrong = stack.env("dispatcher", FLOWQ_INTERNAL_TOKEN="someone-elses-token-123")
    dispatcher = procs.start_service("dispatcher", wrong, name="dispatcher")
    dispatcher.wait_healthy(stack.target("dispatcher"), "flowq.v1.QueueService", timeout=60)
    with Client(stack.target(), queue_target=stack.target("dispatcher"), token=TOKEN_A) as flowq:
        flowq.put_workflow(
            json_format.ParseDict({"appId": "demo", "name": "noop", **NOOP}, Workflow())
        )
        task_id = flowq.exec_workflow("demo", "noop").task_id
        eventually(lambda: "same FLOWQ_INTERNAL_TOKEN" in dispatcher.log_text(), 30)
        time.sleep(3)  # several rounds of refusals (FLOWQ_CLAIM_IDLE_MS is 1 s here)
        assert flowq.get_task(task_id).status == types_pb2.TASK_STATUS_QUEUED
        assert flowq.queue_stats().dead_letters == 0
        dispatcher.terminate()
        stack.start("dispatcher")  # now with the right token
        assert flowq.wait(task_id, timeout=30).status == types_pb2.TASK_STATUS_SUCCEEDED
