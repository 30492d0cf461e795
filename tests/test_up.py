"""`flowq up` on a fresh directory: migrations on SQLite, a private Redis when none answers,
the three services, a task run through the CLI, and a graceful stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flowq.netutil import free_port, port_listening, wait_port_closed

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count < 65535 and not any(port_listening(base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports")


def test_up_runs_the_stack_with_a_private_redis_and_stops_on_ctrl_c(tmp_path: Path, procs) -> None:
    grpc_base, metrics_base, http_port = (
        consecutive_free_ports(3),
        consecutive_free_ports(2),
        free_port(),
    )
    env = {
        "PATH": os.environ["PATH"],
        "FLOWQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing answers there
        "FLOWQ_GRPC_PORT": str(grpc_base),
        "FLOWQ_HTTP_PORT": str(http_port),
        "FLOWQ_METRICS_PORT": str(metrics_base),
        "FLOWQ_SHUTDOWN_GRACE_SECONDS": "5",
        "COLUMNS": "200",
    }
    up = procs.start("up", [str(BIN / "flowq"), "up"], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while "ready" not in up.log_text():
        assert up.running(), up.log_text()
        assert time.monotonic() < deadline, up.log_text()
        time.sleep(0.2)
    log = up.log_text()
    assert "started a private one" in log
    assert (tmp_path / ".flowq" / "flowq.db").exists()

    client_env = {"PATH": os.environ["PATH"], "FLOWQ_SERVER": f"127.0.0.1:{grpc_base}"}
    subprocess.run(
        [str(BIN / "flowq"), "apply", "-f", str(ROOT / "examples" / "hello.yaml")],
        env=client_env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    run = subprocess.run(
        [str(BIN / "flowq"), "exec", "demo", "hello", "--wait"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCEEDED" in run.stdout

    os.kill(up.pid, signal.SIGINT)
    assert up.wait_exit(timeout=30) == 0, up.log_text()
    assert "stopped" in up.log_text()
    for port in (grpc_base, grpc_base + 1, grpc_base + 2, http_port):
        assert wait_port_closed(port, timeout=10), f"port {port} still open after flowq up stopped"
