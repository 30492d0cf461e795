"""The shared runner: every service stops gracefully on SIGTERM, exits 0 and frees its ports;
a bad configuration is refused at start with every bad variable named."""

from __future__ import annotations

import json

from flowq.netutil import wait_port_closed
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
