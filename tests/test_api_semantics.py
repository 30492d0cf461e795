"""API behaviour beyond the happy path: idempotency, cancel, dead-letter paging errors,
and what a shell step may see of the executor's environment."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from flowq.client import Client, ClientError
from flowq.v1 import types_pb2
from tests.support.stack import Stack


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


SLEEPY = {
    "steps": [
        {"name": "nap", "type": "sleep", "properties": {"seconds": 30}},
        {"name": "after", "type": "sleep", "properties": {"seconds": 0}},
    ]
}


def test_idempotency_key_returns_the_same_task_even_when_requests_race(stack: Stack) -> None:
    stack.put_workflow(
        "nap", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}
    )
    stack.put_workflow(
        "other", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}
    )
    url = f"{stack.base_url}/api/v1/applications/demo/workflow/exec"
    body = {"workflowName": "nap", "idempotencyKey": "deploy-42"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: httpx.post(url, json=body, timeout=30), range(8)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["taskId"] for r in replies}) == 1
    with Client(stack.target()) as flowq:
        assert len(flowq.list_tasks("demo")) == 1
    clash = httpx.post(url, json={"workflowName": "other", "idempotencyKey": "deploy-42"})
    assert clash.status_code == 409
    assert "deploy-42" in clash.json()["message"] and "nap" in clash.json()["message"]


def test_cancel_a_queued_task_at_once_and_a_running_one_through_its_owner(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start(
        "dispatcher", "apiserver"
    )
    stack.put_workflow("nap", SLEEPY)
    with Client(stack.target()) as flowq:
        queued = flowq.exec_workflow("demo", "nap")  # no executor: stays QUEUED
        cancelled = flowq.cancel_task("demo", queued.task_id, reason="wrong build", user="ana")
        assert cancelled.status == types_pb2.TASK_STATUS_CANCELLED
        assert (
            cancelled.reason == "cancelled"
            and "ana" in cancelled.message
            and "wrong build" in cancelled.message
        )
        assert [s.status for s in cancelled.steps] == [types_pb2.STEP_STATUS_SKIPPED] * 2

        stack.start("executor")
        running = flowq.exec_workflow("demo", "nap")
        deadline = time.monotonic() + 30
        while flowq.get_task(running.task_id).steps[0].status != types_pb2.STEP_STATUS_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        asked = time.monotonic()
        flowq.cancel_task("demo", running.task_id, reason="rollback", user="bo")
        done = flowq.wait(running.task_id, timeout=30)
        assert time.monotonic() - asked < 10
        assert done.status == types_pb2.TASK_STATUS_CANCELLED
        assert "bo" in done.message and "rollback" in done.message  # the user's note survives
        assert [s.status for s in done.steps] == [
            types_pb2.STEP_STATUS_CANCELLED,
            types_pb2.STEP_STATUS_SKIPPED,
        ]

        with pytest.raises(ClientError) as err:
            flowq.cancel_task("demo", running.task_id)
        assert err.value.code == "FAILED_PRECONDITION"
        with pytest.raises(ClientError) as err:
            flowq.cancel_task("another-app", queued.task_id)
        assert err.value.code == "NOT_FOUND"


def test_dead_letter_paging_and_ids_are_validated(stack: Stack) -> None:
    with Client(stack.target(), queue_target=stack.target("dispatcher")) as flowq:
        from flowq.v1 import queue_service_pb2 as qpb

        for call, request in (
            (flowq._queue.ListDeadLetters, qpb.ListDeadLettersRequest(page_token="garbage")),
            (flowq._queue.ReplayDeadLetters, qpb.ReplayDeadLettersRequest(ids=["nope"])),
            (flowq._queue.PurgeDeadLetters, qpb.PurgeDeadLettersRequest(all=True)),
        ):
            with pytest.raises(ClientError) as err:
                flowq._call(call, request)
            assert err.value.code == "INVALID_ARGUMENT", err.value


def test_shell_steps_do_not_see_the_executors_settings(stack: Stack) -> None:
    stack.put_workflow(
        "env",
        {
            "steps": [
                {
                    "name": "env",
                    "type": "shell",
                    "properties": {
                        "command": "env | grep ^FLOWQ_ | cut -d= -f1 | sort",
                        "env": {"GREETING": "hi"},
                    },
                }
            ]
        },
    )
    with Client(stack.target()) as flowq:
        done = flowq.wait(flowq.exec_workflow("demo", "env").task_id, timeout=30)
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
    names = done.steps[0].output.split()
    assert names == [
        "FLOWQ_APP_ID",
        "FLOWQ_ATTEMPT",
        "FLOWQ_STEP",
        "FLOWQ_TASK_ID",
        "FLOWQ_WORKFLOW",
    ]


def test_grpc_watch_delivers_each_step_in_order_as_it_happens_and_ends(stack: Stack) -> None:
    """Steps of 0.3 s: a watcher that polled SQL every 2 s (the fallback) would miss them;
    the task-changes channel wakes it on every committed write."""
    stack.put_workflow(
        "three",
        {
            "steps": [
                {"name": f"s{i}", "type": "sleep", "properties": {"seconds": 0.3}} for i in range(3)
            ]
        },
    )
    with stack.client() as flowq:
        task_id = flowq.exec_workflow("demo", "three").task_id
        seen = list(flowq.watch_task(task_id, timeout=30))  # the stream ends by itself
    assert seen[-1].status == types_pb2.TASK_STATUS_SUCCEEDED
    running = [
        next(s.name for s in t.steps if s.status == types_pb2.STEP_STATUS_RUNNING)
        for t in seen
        if any(s.status == types_pb2.STEP_STATUS_RUNNING for s in t.steps)
    ]
    assert sorted(set(running), key=running.index) == ["s0", "s1", "s2"], running
    done = [sum(s.status == types_pb2.STEP_STATUS_SUCCEEDED for s in t.steps) for t in seen]
    assert done == sorted(done)  # never goes backwards
