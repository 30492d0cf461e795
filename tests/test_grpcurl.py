"""Operators use grpcurl: reflection, health and the API must work without proto files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import HEALTH_NAMES, Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> str:
    done = subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, f"grpcurl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


def test_grpcurl_lists_checks_health_and_runs_a_task(stack: Stack) -> None:
    for role, name in HEALTH_NAMES.items():
        services = grpcurl(stack.target(role), "list").split()
        assert name in services and "grpc.health.v1.Health" in services, (role, services)
        for service in ("", name):
            reply = json.loads(
                grpcurl(
                    "-d",
                    json.dumps({"service": service}),
                    stack.target(role),
                    "grpc.health.v1.Health/Check",
                )
            )
            assert reply["status"] == "SERVING", (role, service, reply)

    methods = grpcurl(stack.target(), "list", "flowq.v1.WorkflowService").split()
    assert "flowq.v1.WorkflowService.ExecWorkflow" in methods

    workflow = {
        "appId": "ops",
        "name": "hello",
        "workflow": {
            "steps": [
                {"name": "hi", "type": "shell", "properties": {"command": "echo from grpcurl"}}
            ]
        },
    }
    grpcurl("-d", json.dumps(workflow), stack.target(), "flowq.v1.WorkflowService/PutWorkflow")
    task = json.loads(
        grpcurl(
            "-d",
            json.dumps({"appId": "ops", "workflowName": "hello"}),
            stack.target(),
            "flowq.v1.WorkflowService/ExecWorkflow",
        )
    )
    assert task["status"] == "TASK_STATUS_QUEUED", task  # grpcurl prints proto field names
    watched = grpcurl(
        "-d",
        json.dumps({"taskId": task["task_id"]}),
        stack.target(),
        "flowq.v1.WorkflowService/WatchTask",
    )
    assert "TASK_STATUS_SUCCEEDED" in watched
    got = json.loads(
        grpcurl(
            "-d",
            json.dumps({"taskId": task["task_id"]}),
            stack.target(),
            "flowq.v1.WorkflowService/GetTask",
        )
    )
    assert got["status"] == "TASK_STATUS_SUCCEEDED"
    assert got["steps"][0]["output"] == "from grpcurl\n"
