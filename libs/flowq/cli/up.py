"""`flowq up`: the whole local stack in one process tree.

Migrations on FLOWQ_DATABASE_URL (SQLite by default), the Redis at FLOWQ_REDIS_URL if it
answers or else a private redis-server, then the three services as child processes with shell
steps allowed. Ctrl-C (or SIGTERM) stops them gracefully, in reverse order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from flowq.config import Settings
from flowq.db.migrate import upgrade
from flowq.localredis import LocalRedis, redis_answers_sync

START_TIMEOUT_SECONDS = 60


@dataclass
class Child:
    role: str
    grpc_port: int
    health_name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


def _healthy(port: int, service: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def run_stack(data_dir: Path, console: Console) -> int:
    settings = Settings.from_env("apiserver")
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)

    console.print(f"[bold]flowq up[/bold]: database {settings.public()['database_url']}")
    upgrade(settings.database_url)
    console.print("  migrations applied")

    redis: LocalRedis | None = None
    redis_url = settings.redis_url
    if redis_answers_sync(redis_url):
        console.print(f"  using Redis at {settings.public()['redis_url']}")
    else:
        redis = LocalRedis(data_dir / "redis").start()
        redis_url = redis.url
        console.print(
            f"  no Redis at {settings.public()['redis_url']}; started a private one at {redis_url}"
        )

    # FLOWQ_GRPC_PORT is the apiserver's; the dispatcher and executor take the next two.
    # FLOWQ_METRICS_PORT is the dispatcher's metrics port; the executor takes the next one.
    grpc_ports = {
        role: settings.grpc_port + i
        for i, role in enumerate(("apiserver", "dispatcher", "executor"))
    }
    metrics_base = Settings.from_env("dispatcher").metrics_port
    metrics_ports = {
        "apiserver": settings.http_port,
        "dispatcher": metrics_base,
        "executor": metrics_base + 1,
    }
    env = dict(
        os.environ,
        FLOWQ_REDIS_URL=redis_url,
        FLOWQ_DATABASE_URL=settings.database_url,
        FLOWQ_EXECUTOR_ALLOW_SHELL="true",
        FLOWQ_EXECUTOR_TARGET=f"127.0.0.1:{grpc_ports['executor']}",
        PYTHONUNBUFFERED="1",
    )
    children = [
        Child(role, grpc_ports[role], health_name, logs / f"{role}.log")
        for role, health_name in (
            ("executor", "flowq.v1.ExecutorService"),
            ("dispatcher", "flowq.v1.QueueService"),
            ("apiserver", "flowq.v1.WorkflowService"),
        )
    ]
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            console.print("second signal: killing everything now")
            for child in children:
                if child.proc and child.proc.poll() is None:
                    child.proc.kill()
            raise SystemExit(130)
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    try:
        for child in children:
            child_env = dict(
                env,
                FLOWQ_GRPC_PORT=str(child.grpc_port),
                FLOWQ_METRICS_PORT=str(metrics_ports[child.role]),
            )
            if "FLOWQ_INSTANCE_ID" in env:  # one id per process: consumers and owners must differ
                child_env["FLOWQ_INSTANCE_ID"] = f"{env['FLOWQ_INSTANCE_ID']}-{child.role}"
            with open(child.log_path, "ab") as log_file:
                child.proc = subprocess.Popen(
                    [sys.executable, "-m", f"flowq_{child.role}"],
                    env=child_env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        waiting = list(children)
        while waiting and not stopping:
            for child in list(waiting):
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(
                        f"{child.role} exited with code {child.proc.returncode}; "
                        f"see {child.log_path}:\n{_tail(child.log_path)}"
                    )
                if _healthy(child.grpc_port, child.health_name):
                    waiting.remove(child)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{', '.join(c.role for c in waiting)} not ready after {START_TIMEOUT_SECONDS}s; "
                    f"see the logs in {logs}"
                )
            time.sleep(0.2)
        if not stopping:
            for role in ("executor", "dispatcher"):
                console.print(
                    f"  {role:<11} gRPC 127.0.0.1:{grpc_ports[role]}   "
                    f"metrics http://127.0.0.1:{metrics_ports[role]}/metrics"
                )
            console.print(
                f"  apiserver   gRPC 127.0.0.1:{grpc_ports['apiserver']}   "
                f"REST http://127.0.0.1:{settings.http_port}/api/v1",
                soft_wrap=True,
            )
            console.print(
                f"  logs in {logs}/   [bold green]ready[/bold green]; Ctrl-C stops everything"
            )
        while not stopping:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(
                        f"{child.role} exited with code {child.proc.returncode}; "
                        f"see {child.log_path}:\n{_tail(child.log_path)}"
                    )
            time.sleep(0.5)
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True)
        code = 1
    finally:
        console.print("stopping: apiserver, dispatcher, executor ...")
        for child in reversed(children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=settings.shutdown_grace_seconds + 5)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        if redis is not None:
            redis.stop()
        console.print("stopped")
    return code


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
