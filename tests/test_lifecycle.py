"""The shared runner: every service stops gracefully on SIGTERM, exits 0 and frees its ports;
a bad configuration is refused at start with every bad variable named."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import grpc
import httpx
import psycopg

from flowq.netutil import wait_port_closed
from flowq.v1 import types_pb2
from flowq.v1 import workflow_service_pb2 as pb
from flowq.v1 import workflow_service_pb2_grpc as pb_grpc
from tests.support.flows import eventually
from tests.support.stack import Stack


def test_sigterm_drains_and_exits_zero_freeing_ports(
    procs, sqlite_database_url, redis_server_url, key_prefix
):
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()
    for role in ("apiserver", "dispatcher", "executor"):
        process = stack.processes[role]
        assert process.terminate(timeout=20) == 0, process.log_tail()
        assert wait_port_closed(stack.grpc_ports[role], timeout=5), f"{role} gRPC port still open"
        messages = [
            json.loads(line)["message"]
            for line in process.log_text().splitlines()
            if line.startswith("{")
        ]
        assert "drain started" in messages and "drain finished" in messages, messages
    assert wait_port_closed(stack.http_port, timeout=5)


def test_bad_configuration_names_every_bad_variable_and_exits_2(procs, sqlite_database_url):
    process = procs.start_service(
        "dispatcher",
        {
            "FLOWQ_DATABASE_URL": sqlite_database_url,
            "FLOWQ_MAX_DELIVERIES": "zero",
            "FLOWQ_CLAIM_IDLE_MS": "-1",
        },
    )
    assert process.wait_exit(timeout=30) == 2
    log = process.log_text()
    assert "FLOWQ_MAX_DELIVERIES" in log and "FLOWQ_CLAIM_IDLE_MS" in log
    assert "Traceback" not in log


def test_a_port_in_use_is_a_clear_error_not_a_traceback(
    procs, sqlite_database_url, redis_server_url, key_prefix
):
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start("apiserver")
    for clash in (
        {"FLOWQ_GRPC_PORT": str(stack.grpc_ports["apiserver"])},
        {"FLOWQ_HTTP_PORT": str(stack.http_port)},
    ):
        env = stack.env("apiserver", **{"FLOWQ_GRPC_PORT": "0", "FLOWQ_HTTP_PORT": "0", **clash})
        process = procs.start_service("apiserver", env, name="second-apiserver")
        assert process.wait_exit(timeout=30) == 2
        log = process.log_text()
        assert "is another process using it?" in log and "Traceback" not in log, log


def _open_streams(stack: Stack, task_id: str) -> tuple[threading.Thread, list[str]]:
    """A gRPC WatchTask and a REST :watch on a task that will not end; returns the reader
    thread and a list it appends to (`grpc-ended:<code>`, `rest-ended`) as each stream ends."""
    events: list[str] = []

    def grpc_watch() -> None:
        with grpc.insecure_channel(stack.target()) as channel:
            stream = pb_grpc.WorkflowServiceStub(channel).WatchTask(
                pb.WatchTaskRequest(task_id=task_id)
            )
            try:
                for _ in stream:
                    pass
                events.append("grpc-ended:OK")
            except grpc.RpcError as exc:
                events.append(f"grpc-ended:{exc.code().name}")

    def rest_watch() -> None:
        try:
            with httpx.stream(
                "GET", f"{stack.base_url}/api/v1/tasks/{task_id}:watch", timeout=60
            ) as reply:
                for _ in reply.iter_lines():
                    pass
        except httpx.HTTPError:
            pass
        events.append("rest-ended")

    threads = [
        threading.Thread(target=grpc_watch, daemon=True),
        threading.Thread(target=rest_watch, daemon=True),
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)  # both streams are open and have sent the task once
    return threads, events


def test_streams_that_outlive_the_grace_are_ended_and_the_process_exits_zero(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_SHUTDOWN_GRACE_SECONDS": "2"},
    ).start("dispatcher", "apiserver")  # no executor: the task stays QUEUED, the watches never end
    stack.put_workflow(
        "nap", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 1}}]}
    )
    with stack.client() as flowq:
        task_id = flowq.exec_workflow("demo", "nap").task_id
    threads, events = _open_streams(stack, task_id)
    started = time.monotonic()
    assert stack.processes["apiserver"].terminate(timeout=30) == 0
    took = time.monotonic() - started
    assert took < 2 + 8, took  # the grace, plus a small bound
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(e.split(":")[0] for e in events) == ["grpc-ended", "rest-ended"], events


def test_a_second_signal_during_the_drain_exits_at_once_non_zero(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    stack = Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_SHUTDOWN_GRACE_SECONDS": "60"},
    ).start("dispatcher", "apiserver")
    stack.put_workflow(
        "nap", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 1}}]}
    )
    with stack.client() as flowq:
        task_id = flowq.exec_workflow("demo", "nap").task_id
    _open_streams(stack, task_id)  # keeps the drain waiting for its 60 s grace
    apiserver = stack.processes["apiserver"]
    os.kill(apiserver.pid, signal.SIGTERM)
    time.sleep(1)
    assert apiserver.running(), "the drain should still be waiting for the open streams"
    os.kill(apiserver.pid, signal.SIGTERM)
    assert apiserver.wait_exit(timeout=5) == 130
    assert "second signal during drain" in apiserver.log_text()


def test_a_client_that_never_finishes_its_headers_is_dropped(
    procs, sqlite_database_url, redis_server_url, key_prefix
) -> None:
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start("apiserver")
    for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):  # fresh, and after a request
        with socket.create_connection(("127.0.0.1", stack.http_port), timeout=30) as sock:
            if first:
                sock.sendall(first)
                answer = b""
                while b'"SERVING"}' not in answer:
                    answer += sock.recv(4096)
                assert b"200 OK" in answer
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            started = time.monotonic()
            rest = sock.recv(4096)
            assert rest == b"", rest  # closed by the server, nothing answered
            assert time.monotonic() - started < 10


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", port))
        except (ConnectionRefusedError, TimeoutError, OSError):
            return True
    return False


def test_calls_in_flight_complete_during_the_drain_while_new_connections_are_refused(
    procs, pg_database_url, redis_server_url, key_prefix
) -> None:
    """A REST watch and a gRPC call that is slow (its UPDATE waits on a row lock this test
    holds) are both in flight when the apiserver gets SIGTERM: both finish normally, new
    connections are refused meanwhile, the process exits 0, and its ports bind again at once."""
    stack = Stack(
        procs,
        pg_database_url,
        redis_server_url,
        key_prefix,
        extra_env={"FLOWQ_SHUTDOWN_GRACE_SECONDS": "20"},
    ).start()
    stack.put_workflow(
        "short", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 2}}]}
    )
    stack.put_workflow(
        "long", {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 60}}]}
    )
    with stack.client() as flowq:
        watched = flowq.exec_workflow("demo", "short").task_id
        locked = flowq.exec_workflow("demo", "long").task_id
        eventually(lambda: flowq.get_task(locked).status == types_pb2.TASK_STATUS_RUNNING, 30)

    lines: list[dict] = []

    def watch() -> None:
        url = f"{stack.base_url}/api/v1/tasks/{watched}:watch"
        with httpx.stream("GET", url, timeout=60) as reply:
            lines.extend(json.loads(line) for line in reply.iter_lines() if line)

    slow: list[object] = []

    def cancel() -> None:
        with grpc.insecure_channel(stack.target()) as channel:
            slow.append(
                pb_grpc.WorkflowServiceStub(channel).CancelTask(
                    pb.CancelTaskRequest(app_id="demo", task_id=locked, reason="drain test"),
                    timeout=60,
                )
            )

    with psycopg.connect(pg_database_url, autocommit=False) as lock:
        lock.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (locked,))
        threads = [threading.Thread(target=watch), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        time.sleep(1)  # the cancel now waits on the lock; the watch streams
        apiserver = stack.processes["apiserver"]
        os.kill(apiserver.pid, signal.SIGTERM)
        eventually(lambda: _refuses_connections(stack.grpc_ports["apiserver"]), 5, "gRPC refuses")
        eventually(lambda: _refuses_connections(stack.http_port), 5, "HTTP refuses")
        assert apiserver.running() and not slow  # still draining; the call still waits
        lock.rollback()  # let the slow call finish
    for thread in threads:
        thread.join(timeout=30)
    assert slow and slow[0].cancel_requested, slow  # the slow call completed normally
    assert lines and lines[-1]["status"] == "TASK_STATUS_SUCCEEDED", lines
    assert apiserver.wait_exit(timeout=30) == 0
    for port in (stack.grpc_ports["apiserver"], stack.http_port):
        with socket.socket() as sock:
            # As a restarted flowq binds: SO_REUSEADDR, which TIME_WAIT connections allow.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen()
