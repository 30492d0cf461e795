"""Shared fixtures: real Redis, real PostgreSQL and SQLite, and service processes.

Servers: the machine's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) when they
answer, else private ones started for the session (`LocalRedis`, `LocalPostgres`).
`FLOWQ_TEST_REDIS_URL` / `FLOWQ_TEST_POSTGRES_URL` point the tests at other servers.
Nothing is skipped: a server that cannot be had fails the tests that need it, saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowq.localredis import LocalRedis, LocalRedisError, redis_answers_sync
from flowq.netutil import confine_ports, worker_port_slice
from tests.support.kube_double import KubeTarget, kube_target
from tests.support.pg import (
    LocalPostgres,
    LocalPostgresError,
    can_create_databases,
    create_database,
    drop_database,
)
from tests.support.procs import ProcessGroup
from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
SHARED_POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_GROUPS = pytest.StashKey[list[ProcessGroup]]()


def pytest_configure(config: pytest.Config) -> None:
    """Give each pytest-xdist worker its own slice of ports for the servers it starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... (set by xdist)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        confine_ports(*worker_port_slice(int(worker[2:]), count))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the item, so fixtures can tell a failed test at teardown."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


# -- servers (session) --------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis for the whole session (shared: use `key_prefix`, never FLUSHALL)."""
    override = os.environ.get("FLOWQ_TEST_REDIS_URL")
    if override:
        if not redis_answers_sync(override, timeout=2.0):
            pytest.fail(
                f"Redis: FLOWQ_TEST_REDIS_URL={override} does not answer PING", pytrace=False
            )
        yield override
        return
    if redis_answers_sync(SHARED_REDIS_URL, timeout=1.0):
        yield SHARED_REDIS_URL
        return
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    problem = None
    try:
        server.start()
    except LocalRedisError as exc:
        server.stop()
        problem = str(exc)
    if problem is not None:
        pytest.fail(
            f"Redis is required: nothing answers at {SHARED_REDIS_URL} and a private "
            f"redis-server could not be started: {problem}",
            pytrace=False,
        )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL role that may create databases, for the whole session."""
    override = os.environ.get("FLOWQ_TEST_POSTGRES_URL")
    candidates = (override,) if override else SHARED_POSTGRES_URLS
    for url in candidates:
        if can_create_databases(url):
            yield url
            return
    if override:
        pytest.fail(
            f"PostgreSQL: FLOWQ_TEST_POSTGRES_URL={override} does not answer, or its role "
            "may not CREATE DATABASE",
            pytrace=False,
        )
    server = LocalPostgres()
    problem = None
    try:
        server.start()
    except LocalPostgresError as exc:
        server.stop()
        problem = str(exc)
    if problem is not None:
        pytest.fail(
            "PostgreSQL is required: no server with a role allowed to create databases at "
            f"{', '.join(SHARED_POSTGRES_URLS)}, and a private one could not be started: "
            f"{problem}",
            pytrace=False,
        )
    try:
        yield server.url
    finally:
        server.stop()


# -- per test -----------------------------------------------------------------------------


def _stop_test_processes(request: pytest.FixtureRequest) -> None:
    """Kill the test's service processes before its data goes, whatever the fixture order,
    so no process writes a key or holds a connection after the cleanup."""
    leftovers: list[int] = []
    for group in request.node.stash.get(_GROUPS, []):
        leftovers += group.close()
    assert not leftovers, f"processes survived SIGKILL: {leftovers}"


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest, redis_server_url: str) -> Iterator[str]:
    """A unique FLOWQ_KEY_PREFIX (`flowq-test-<hex>`); its keys are deleted after the test."""
    prefix = new_key_prefix()
    yield prefix
    _stop_test_processes(request)
    delete_prefixed_keys(redis_server_url, prefix)


@pytest.fixture
def pg_database_url(request: pytest.FixtureRequest, postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (`postgresql://user@host:port/db`), dropped after."""
    url = create_database(postgres_admin_url)
    yield url
    _stop_test_processes(request)
    drop_database(postgres_admin_url, url)


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A SQLite file in the test's tmp_path: `sqlite:///<absolute path>`."""
    return f"sqlite:///{tmp_path / 'flowq.db'}"


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on a fresh SQLite file and once on a fresh PostgreSQL database."""
    fixture = "sqlite_database_url" if request.param == "sqlite" else "pg_database_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start service processes through this; all are killed at teardown (logs in tmp_path).

    When the test failed, the last log lines of every process are printed with the report.
    """
    group = ProcessGroup(tmp_path / "procs")
    request.node.stash.setdefault(_GROUPS, []).append(group)
    try:
        yield group
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()) and group.processes:
            print(f"\n=== service logs ===\n{group.logs()}")
        _stop_test_processes(request)


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeTarget]:
    """A Kubernetes API and a fresh namespace `flowq-test-<hex6>` in it.

    By default a Kubernetes API test double (`tests.support.kube_double.KubeApiDouble`),
    stopped after the test. `FLOWQ_TEST_KUBECONFIG=<kubeconfig>` runs the same tests against
    that real cluster (e.g. kind): `kube.double` is None, the namespace is deleted after.
    """
    with kube_target(tmp_path, os.environ.get("FLOWQ_TEST_KUBECONFIG") or None) as target:
        yield target
