"""`http` steps against real HTTP servers: the expected status, bodies and headers, redirects
kept to the same origin unless asked, unreachable hosts, timeouts and property validation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from flowq.netutil import free_port
from flowq.v1 import types_pb2
from tests.support.stack import Stack

S = types_pb2


class _Handler(BaseHTTPRequestHandler):
    """/echo answers the request back as JSON; /status/N answers N; /to?url=U redirects to U;
    /slow waits 10 s."""

    def _reply(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/echo":
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            echo = {"method": self.command, "token": self.headers.get("X-Token"), "body": body}
            echo |= {
                k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-flowq")
            }
            self._reply(201, json.dumps(echo))
        elif path.startswith("/status/"):
            self._reply(int(path.rsplit("/", 1)[1]), "the server says no")
        elif path == "/to":
            self._reply(302, "", {"Location": query.removeprefix("url=")})
        elif path == "/slow":
            time.sleep(10)
            self._reply(200, "late")
        else:
            self._reply(404, "no such path")

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """Two HTTP servers on different ports: two origins."""
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in started)  # type: ignore[misc]
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


def http(name: str, **props) -> dict:
    return {"name": name, "type": "http", "properties": props}


def run(stack: Stack, name: str, *steps: dict) -> types_pb2.Task:
    stack.put_workflow(name, {"mode": "DAG", "steps": list(steps)})
    with stack.client() as flowq:
        return flowq.wait(flowq.exec_workflow("demo", name).task_id, timeout=60)


def test_http_steps_send_the_request_and_check_the_answer(stack: Stack, servers) -> None:
    here, other = servers
    task = run(
        stack,
        "calls",
        http(
            "post",
            url=f"{here}/echo",
            method="post",
            headers={"X-Token": "s3cret", "x-flowq-step": "the step's own"},
            body={"release": 42},
            expectStatus=201,
        ),
        http("same-origin-redirect", url=f"{here}/to?url=/echo", expectStatus=[200, 201]),
        http("cross-origin-allowed", url=f"{here}/to?url={other}/echo", followRedirects="all"),
        http("want-the-redirect", url=f"{here}/to?url={other}/echo", expectStatus=302),
    )
    steps = {s.name: s for s in task.steps}
    assert task.status == S.TASK_STATUS_SUCCEEDED, task
    head, _, body = steps["post"].output.partition("\n")
    assert head == "201 Created"
    assert json.loads(body) == {
        "method": "POST",
        "token": "s3cret",
        "body": '{"release":42}',
        "x-flowq-task-id": task.task_id,  # who sent it, so a receiver can act once
        "x-flowq-step": "the step's own",  # a step's own header wins over ours
        "x-flowq-attempt": "1",
    }
    assert steps["same-origin-redirect"].output.startswith("201 Created")
    assert steps["cross-origin-allowed"].output.startswith("201 Created")
    assert steps["want-the-redirect"].output.startswith("302 Found")


def test_http_step_failures_say_what_went_wrong(stack: Stack, servers) -> None:
    here, other = servers
    cases = {  # step name: (properties, what its message says)
        "bad-status": (
            {"url": f"{here}/status/503"},
            "answered 503 Service Unavailable; expected 2xx",
        ),
        "unexpected": (
            {"url": f"{here}/echo", "expectStatus": 200},
            "answered 201 Created; expected 200",
        ),
        "cross-origin": ({"url": f"{here}/to?url={other}/echo"}, "redirects to another host"),
        "unreachable": ({"url": "http://127.0.0.1:1/nothing-listens"}, "ConnectError"),
        "slow": ({"url": f"{here}/slow"}, "timeoutSeconds (1s)"),
    }
    steps = [http(name, **props) for name, (props, _) in cases.items()]
    steps[-1]["timeoutSeconds"] = 1
    task = run(stack, "fails", *steps)  # DAG without failFast: every step runs and fails
    assert task.status == S.TASK_STATUS_FAILED and task.reason in ("step-failed", "timeout")
    for step in task.steps:
        assert step.status == S.STEP_STATUS_FAILED, step
        assert cases[step.name][1] in step.message, step.message


def test_bad_http_properties_are_refused(stack: Stack) -> None:
    cases = [
        ({}, "url", "required by a http step"),
        ({"url": "ftp://example.com/x"}, "url", "http:// or https:// URL"),
        ({"url": "http://x", "method": "FETCH"}, "method", "must be one of GET"),
        ({"url": "http://x", "expectStatus": 999}, "expectStatus", "HTTP status code"),
        ({"url": "http://x", "followRedirects": "maybe"}, "followRedirects", "same-host"),
    ]
    for props, field, says in cases:
        reply = httpx.put(
            f"{stack.base_url}/api/v1/applications/demo/workflows/bad",
            json={"steps": [http("call", **props)]},
        )
        assert reply.status_code == 400, reply.text
        assert says in reply.json()["message"] and field in reply.json()["message"], reply.text
