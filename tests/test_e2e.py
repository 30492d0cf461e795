"""End to end on real processes: Redis, SQL (SQLite and PostgreSQL), the three services
as separate processes, REST over real HTTP and gRPC over real channels."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest

from flowq.client import Client, ClientError
from flowq.v1 import types_pb2
from flowq.v1 import workflow_service_pb2 as pb
from flowq.v1 import workflow_service_pb2_grpc as pb_grpc
from tests.support.flows import eventually
from tests.support.stack import Stack

HELLO = {
    "mode": "STEP_BY_STEP",
    "steps": [
        {
            "name": "greet",
            "type": "shell",
            "properties": {"command": ["sh", "-c", "echo hello $FLOWQ_STEP"]},
        },
        {"name": "pause", "type": "sleep", "properties": {"seconds": 0.2}},
        {"name": "done", "type": "shell", "properties": {"command": "echo done $FLOWQ_ATTEMPT"}},
    ],
}


@pytest.fixture
def stack(procs, database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, database_url, redis_server_url, key_prefix).start()


def wait_task(base_url: str, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = httpx.get(f"{base_url}/api/v1/tasks/{task_id}").json()
        if task["status"] in (
            "TASK_STATUS_SUCCEEDED",
            "TASK_STATUS_FAILED",
            "TASK_STATUS_CANCELLED",
        ):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not end within {timeout}s: {task}")


def test_rest_and_grpc_run_a_workflow_to_success(stack: Stack) -> None:
    put = httpx.put(f"{stack.base_url}/api/v1/applications/demo/workflows/hello", json=HELLO)
    assert put.status_code == 200, put.text
    assert put.json()["version"] == "1"
    assert (
        httpx.get(f"{stack.base_url}/api/v1/applications/demo/workflows/hello").json()["name"]
        == "hello"
    )
    listed = httpx.get(f"{stack.base_url}/api/v1/applications/demo/workflows").json()
    assert [w["name"] for w in listed["workflows"]] == ["hello"]

    # over REST
    started = httpx.post(
        f"{stack.base_url}/api/v1/applications/demo/workflow/exec", json={"workflowName": "hello"}
    )
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "TASK_STATUS_QUEUED"
    rest_task = wait_task(stack.base_url, started.json()["taskId"])
    assert rest_task["status"] == "TASK_STATUS_SUCCEEDED", rest_task
    assert [s["status"] for s in rest_task["steps"]] == ["STEP_STATUS_SUCCEEDED"] * 3
    assert rest_task["steps"][0]["output"] == "hello greet\n"
    assert rest_task["steps"][2]["output"] == "done 1\n"
    assert rest_task["ownerId"].startswith(
        f"executor-{stack.grpc_ports['executor']}-"
    )  # instance id + start token
    assert [e["type"] for e in rest_task["events"]][:2] == ["created", "claimed"]
    assert rest_task["events"][-1]["type"] == "succeeded"

    # over gRPC, with the typed client
    with Client(stack.target()) as flowq:
        task = flowq.exec_workflow("demo", "hello")
        done = flowq.wait(task.task_id, timeout=30)
        assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
        assert [s.status for s in done.steps] == [types_pb2.STEP_STATUS_SUCCEEDED] * 3
        listed_tasks = flowq.list_tasks("demo")
        assert [t.task_id for t in listed_tasks] == [
            task.task_id,
            rest_task["taskId"],
        ]  # newest first


def test_failed_step_fails_the_task_and_skips_the_rest(stack: Stack) -> None:
    workflow = {
        "steps": [
            {"name": "ok", "type": "shell", "properties": {"command": "echo fine"}},
            {
                "name": "boom",
                "type": "shell",
                "properties": {"command": "echo about to fail; exit 3"},
            },
            {"name": "never", "type": "shell", "properties": {"command": "echo never"}},
        ]
    }
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/fails", json=workflow
        ).status_code
        == 200
    )
    task_id = httpx.post(
        f"{stack.base_url}/api/v1/workflow/exec?appId=demo", json={"workflowName": "fails"}
    ).json()["taskId"]
    task = wait_task(stack.base_url, task_id)
    assert task["status"] == "TASK_STATUS_FAILED"
    assert task["reason"] == "step-failed"
    assert "boom" in task["message"] and "exit code 3" in task["message"]
    steps = {s["name"]: s for s in task["steps"]}
    assert steps["ok"]["status"] == "STEP_STATUS_SUCCEEDED"
    assert steps["boom"]["status"] == "STEP_STATUS_FAILED"
    assert steps["boom"]["output"] == "about to fail\n"
    assert steps["never"]["status"] == "STEP_STATUS_SKIPPED"
    assert steps["never"]["attempts"] == 0


def test_dag_runs_branches_and_respects_dependencies(stack: Stack, tmp_path) -> None:
    log = tmp_path / "order.log"
    step = lambda name, deps: {  # noqa: E731
        "name": name,
        "type": "shell",
        "dependsOn": deps,
        "properties": {
            "command": f"echo start-{name} >> {log}; sleep 0.3; echo end-{name} >> {log}"
        },
    }
    workflow = {
        "mode": "DAG",
        "steps": [
            step("build", []),
            step("test", ["build"]),
            step("lint", ["build"]),
            step("publish", ["test", "lint"]),
        ],
    }
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/dag", json=workflow
        ).status_code
        == 200
    )
    task_id = httpx.post(
        f"{stack.base_url}/api/v1/applications/demo/workflow/exec", json={"workflowName": "dag"}
    ).json()["taskId"]
    task = wait_task(stack.base_url, task_id)
    assert task["status"] == "TASK_STATUS_SUCCEEDED", task
    lines = log.read_text().split()
    assert lines[:2] == ["start-build", "end-build"]
    # test and lint overlap: both start before either ends
    middle = lines[2:6]
    assert sorted(middle[:2]) == ["start-lint", "start-test"], lines
    assert lines[6:] == ["start-publish", "end-publish"]


def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_stored(stack: Stack) -> None:
    url = f"{stack.base_url}/api/v1/applications/demo/workflows/bad"
    malformed = httpx.put(url, content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert malformed.json()["message"]

    unknown_type = httpx.put(
        url, json={"steps": [{"name": "x", "type": "teleport", "properties": {}}]}
    )
    assert unknown_type.status_code == 400
    body = unknown_type.json()
    assert "unknown type 'teleport'" in body["message"]
    violations = [v for d in body["details"] for v in d.get("fieldViolations", [])]
    assert violations and violations[0]["field"] == "workflow.steps[0].type"

    missing_prop = httpx.put(
        url, json={"steps": [{"name": "x", "type": "sleep", "properties": {}}]}
    )
    assert missing_prop.status_code == 400 and "seconds" in missing_prop.json()["message"]

    assert httpx.get(url).status_code == 404  # nothing stored

    unknown_workflow = httpx.post(
        f"{stack.base_url}/api/v1/applications/demo/workflow/exec", json={"workflowName": "nope"}
    )
    assert unknown_workflow.status_code == 404
    assert "nope" in unknown_workflow.json()["message"]

    missing_app = httpx.post(
        f"{stack.base_url}/api/v1/workflow/exec", json={"workflowName": "nope"}
    )
    assert missing_app.status_code == 400
    assert "app_id" in missing_app.json()["message"]

    with grpc.insecure_channel(stack.target()) as channel:
        stub = pb_grpc.WorkflowServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.PutWorkflow(
                pb.PutWorkflowRequest(
                    app_id="demo",
                    name="bad",
                    workflow=types_pb2.Workflow(steps=[types_pb2.Step(name="x", type="teleport")]),
                ),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "teleport" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.ExecWorkflow(
                pb.ExecWorkflowRequest(app_id="demo", workflow_name="nope"), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTask(pb.GetTaskRequest(task_id="no-such-task"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The server counts a call just after its answer left, so the client can be first.
    counted = 'flowq_grpc_server_handled_total{code="NOT_FOUND",method="/flowq.v1.WorkflowService/GetTask"} 1.0'
    eventually(lambda: counted in stack.metrics("apiserver"), 10, "the NOT_FOUND call counted")

    with Client(stack.target()) as flowq:
        assert flowq.list_tasks("demo") == []  # no task was created by any of the above


def test_shell_steps_are_refused_when_shell_is_not_allowed(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_EXECUTOR_ALLOW_SHELL": "false"},
    ).start("apiserver")
    url = f"{stack.base_url}/api/v1/applications/demo/workflows/sh"
    refused = httpx.put(
        url, json={"steps": [{"name": "x", "type": "shell", "properties": {"command": "id"}}]}
    )
    assert refused.status_code == 400
    assert "FLOWQ_EXECUTOR_ALLOW_SHELL" in refused.json()["message"]
    assert httpx.get(url).status_code == 404
    with grpc.insecure_channel(stack.target()) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.WorkflowServiceStub(channel).PutWorkflow(
            pb.PutWorkflowRequest(
                app_id="demo",
                name="sh",
                workflow=json_workflow(
                    {"steps": [{"name": "x", "type": "shell", "properties": {"command": "id"}}]}
                ),
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def json_workflow(doc: dict) -> types_pb2.Workflow:
    from google.protobuf import json_format

    return json_format.Parse(json.dumps(doc), types_pb2.Workflow())


def test_client_reports_server_errors(stack: Stack) -> None:
    with Client(stack.target()) as flowq, pytest.raises(ClientError) as err:
        flowq.get_workflow("demo", "missing")
    assert err.value.code == "NOT_FOUND"
    assert "missing" in err.value.message


def test_rest_watch_streams_every_change_until_the_task_ends(stack: Stack) -> None:
    workflow = {
        "steps": [
            {"name": f"s{i}", "type": "sleep", "properties": {"seconds": 0.6}} for i in range(3)
        ]
    }
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/slow", json=workflow
        ).status_code
        == 200
    )
    task_id = httpx.post(
        f"{stack.base_url}/api/v1/applications/demo/workflow/exec", json={"workflowName": "slow"}
    ).json()["taskId"]
    seen = []
    with httpx.stream(
        "GET", f"{stack.base_url}/api/v1/tasks/{task_id}:watch", timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line:
                seen.append(json.loads(line))
    assert seen[-1]["status"] == "TASK_STATUS_SUCCEEDED"
    # each step is seen running, in order, before the stream ends
    running = [
        next(s["name"] for s in t["steps"] if s["status"] == "STEP_STATUS_RUNNING")
        for t in seen
        if any(s["status"] == "STEP_STATUS_RUNNING" for s in t["steps"])
    ]
    assert sorted(set(running), key=running.index) == ["s0", "s1", "s2"]


def test_no_executor_means_no_ack_and_the_task_runs_once_one_starts(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    # Retried every FLOWQ_CLAIM_IDLE_MS (1 s here). An unreachable executor is not the entry's
    # fault, so those deliveries do not count toward FLOWQ_MAX_DELIVERIES (5): never dead-lettered.
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start(
        "dispatcher", "apiserver"
    )
    ledger = tmp_path / "ledger"
    workflow = {
        "steps": [
            {"name": "count", "type": "shell", "properties": {"command": f"echo ran >> {ledger}"}}
        ]
    }
    assert (
        httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/once", json=workflow
        ).status_code
        == 200
    )
    task_id = httpx.post(
        f"{stack.base_url}/api/v1/applications/demo/workflow/exec", json={"workflowName": "once"}
    ).json()["taskId"]

    # The dispatcher reads the entry, cannot reach an executor, and leaves it pending (no ack).
    with Client(stack.target(), queue_target=stack.target("dispatcher")) as flowq:
        deadline = time.monotonic() + 20
        while flowq.queue_stats().pending < 1:
            assert time.monotonic() < deadline, "the entry was never delivered"
            time.sleep(0.1)
        time.sleep(7)  # more claim rounds than FLOWQ_MAX_DELIVERIES: still pending, not dead
        stats = flowq.queue_stats()
        assert (stats.pending, stats.dead_letters) == (1, 0)
        assert flowq.get_task(task_id).status == types_pb2.TASK_STATUS_QUEUED

        stack.start("executor")
        assert flowq.wait(task_id, timeout=30).status == types_pb2.TASK_STATUS_SUCCEEDED
        deadline = time.monotonic() + 10
        while flowq.queue_stats().pending:
            assert time.monotonic() < deadline, "the entry was not acked after the task ran"
            time.sleep(0.1)
    assert ledger.read_text() == "ran\n"  # exactly once
