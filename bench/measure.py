"""What a benchmark run costs, beside how fast it went: CPU seconds and peak memory of each
process (with its children), Redis commands, and PostgreSQL write transactions and WAL bytes.

`Probe` samples every process tree every 100 ms while a run goes on. CPU time is summed over
every process it ever saw in the tree, up to its last sample, so a short-lived child counts
for what it used while it was seen. Peak memory is the largest proportional set size (PSS,
summed over the tree) among the samples: memory shared between processes (PostgreSQL's
shared buffers, a prefork worker's parent pages) is split between them instead of being
counted once per process. Where PSS cannot be read, the resident set (RSS) is used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil
import redis
import sqlalchemy

SAMPLE_SECONDS = 0.1


@dataclass
class _Tree:
    root: psutil.Process
    first_cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU s when first seen
    last_cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU s when last seen
    peak_memory: int = 0

    def sample(self, baseline: bool = False) -> None:
        try:
            members = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        memory = 0
        for proc in members:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    used = times.user + times.system + times.children_user + times.children_system
                try:
                    memory += proc.memory_full_info().pss
                except psutil.AccessDenied:
                    memory += proc.memory_info().rss
            except psutil.Error:
                continue
            # A process first seen at the baseline counts from there; one born during the run
            # counts from zero.
            self.first_cpu.setdefault(proc.pid, used if baseline else 0.0)
            self.last_cpu[proc.pid] = used
        self.peak_memory = max(self.peak_memory, memory)

    def cpu_seconds(self) -> float:
        return sum(self.last_cpu[pid] - self.first_cpu[pid] for pid in self.last_cpu)


class Probe:
    """CPU seconds and peak memory of named process trees over a `with` block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._trees = {name: _Tree(psutil.Process(pid)) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)
        self.result: dict[str, dict[str, float]] = {}

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for tree in self._trees.values():
                tree.sample()

    def __enter__(self) -> Probe:
        for tree in self._trees.values():
            tree.sample(baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for tree in self._trees.values():
            tree.sample()
        self.result = {
            name: {
                "cpu_seconds": round(tree.cpu_seconds(), 3),
                "peak_memory_mib": round(tree.peak_memory / 2**20, 1),
            }
            for name, tree in self._trees.items()
        }


def redis_pid(url: str) -> int:
    return int(redis.Redis.from_url(url).info("server")["process_id"])


def redis_commands(url: str) -> int:
    """Commands the Redis server has processed since it started (all clients, all databases)."""
    return int(redis.Redis.from_url(url).info("stats")["total_commands_processed"])


class PgCounters:
    """Write transactions (transaction ids handed out) and WAL bytes on a PostgreSQL server."""

    def __init__(self, url: str) -> None:
        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def postmaster_pid(self) -> int:
        with self._engine.connect() as conn:  # the backend lives as long as the connection
            backend = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
            return psutil.Process(backend).ppid()

    def read(self) -> tuple[int, int]:
        # txid_current() hands out a transaction id itself: one of the ids counted is ours.
        with self._engine.begin() as conn:
            row = conn.execute(
                sqlalchemy.text(
                    "SELECT txid_current(), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
                )
            ).one()
        return int(row[0]), int(row[1])

    def writes_since(self, before: tuple[int, int]) -> dict[str, int]:
        xid, wal = self.read()
        return {"write_transactions": xid - before[0] - 1, "wal_bytes": wal - before[1]}

    def close(self) -> None:
        self._engine.dispose()
