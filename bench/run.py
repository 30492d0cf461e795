"""`make bench`: flowq beside Celery on this machine, in one run, alternating.

Workloads (the same work for both):
- W1: one-step no-op workflows (flowq: a `sleep 0` step; Celery: one task, acks_late, results on).
- W2: three-step serial workflows of no-op steps (Celery: a chain of three tasks).
- W3: three-step serial workflows whose steps take 10 ms.
- Latency: one-step workflows submitted at a fixed rate, half of flowq's W1 rate, for both.
- Recovery: workflows whose one step records a side effect in a ledger, submitted at the
  latency workload's rate; halfway through, kill -9 one of two executors (Celery: one of two
  workers).

flowq runs as three processes (one apiserver, one dispatcher, one executor) on PostgreSQL and
Redis; Celery as one prefork worker with two processes (this machine's cores) on Redis. A
throughput figure is workflows per second, from the first submit to the last workflow
finished, as a client sees it; 16 clients submit concurrently; the median of the rounds is
reported, with the cost of the median round (CPU, memory, Redis commands, database writes).
Redis and PostgreSQL are found as `make test` finds them (FLOWQ_TEST_REDIS_URL and
FLOWQ_TEST_POSTGRES_URL, else the machine's, else private servers started for the run).

    .venv/bin/python bench/run.py [--quick]      (make bench / make bench-quick)

Writes bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy  # noqa: E402

from bench.ledger import Ledger  # noqa: E402
from bench.measure import PgCounters, Probe, redis_commands, redis_pid  # noqa: E402
from flowq.client import Client  # noqa: E402
from flowq.db import sync_url  # noqa: E402
from flowq.localredis import LocalRedis, redis_answers_sync  # noqa: E402
from tests.support.flows import eventually  # noqa: E402
from tests.support.pg import (  # noqa: E402
    LocalPostgres,
    can_create_databases,
    create_database,
    drop_database,
)
from tests.support.procs import ProcessGroup, ServiceProcess  # noqa: E402
from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

T = TypeVar("T")
SHARED_REDIS = "redis://127.0.0.1:6379/0"
SHARED_POSTGRES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
PEER = ROOT / "bench" / "peer"
PEER_PYTHON = ROOT / "bench" / ".venv-celery" / "bin" / "python"
CLIENTS = 16
#: workload -> (steps, seconds each step takes)
SHAPES = {"w1": (1, 0.0), "w2": (3, 0.0), "w3": (3, 0.01)}
#: flowq's settings in the benchmark: its defaults, quieter logs
FLOWQ_ENV = {
    "FLOWQ_LOG_LEVEL": "WARNING",
    "FLOWQ_CLAIM_IDLE_MS": "15000",
    "FLOWQ_BACKOFF_MAX_SECONDS": "300",
    "FLOWQ_SHUTDOWN_GRACE_SECONDS": "30",
}


@dataclass(frozen=True)
class Servers:
    redis: str  # flowq's (database 0 or as given); the peer uses databases 15 and 14, flushed
    postgres: str  # a role that may create databases

    def _peer_db(self, db: int) -> str:
        return self.redis.rsplit("/", 1)[0] + f"/{db}"

    @property
    def peer_redis(self) -> str:
        return self._peer_db(15)

    @property
    def peer_recovery_redis(self) -> str:
        return self._peer_db(14)


def find_servers(stack: contextlib.ExitStack) -> Servers:
    """Redis and PostgreSQL as `make test` finds them: FLOWQ_TEST_REDIS_URL and
    FLOWQ_TEST_POSTGRES_URL when set, else the machine's, else private ones started here."""
    redis_url = os.environ.get("FLOWQ_TEST_REDIS_URL", "")
    if redis_url and not redis_answers_sync(redis_url, timeout=2.0):
        raise SystemExit(f"FLOWQ_TEST_REDIS_URL={redis_url} does not answer PING")
    if not redis_url:
        redis_url = SHARED_REDIS
        if not redis_answers_sync(redis_url, timeout=1.0):
            print(f"nothing answers at {redis_url}: starting a private redis-server", flush=True)
            private = LocalRedis(Path(tempfile.mkdtemp(prefix="flowq-bench-redis-")))
            redis_url = stack.enter_context(private).url
    override = os.environ.get("FLOWQ_TEST_POSTGRES_URL", "")
    for url in (override,) if override else SHARED_POSTGRES:
        if can_create_databases(url):
            return Servers(redis_url, url)
    if override:
        raise SystemExit(
            f"FLOWQ_TEST_POSTGRES_URL={override} does not answer, or may not CREATE DATABASE"
        )
    print("no PostgreSQL answers on 127.0.0.1:5432: starting a private one", flush=True)
    return Servers(redis_url, stack.enter_context(LocalPostgres()).url)


def sleep_workflow(steps: int, seconds: float) -> dict:
    return {
        "steps": [
            {"name": f"s{i}", "type": "sleep", "properties": {"seconds": seconds}}
            for i in range(steps)
        ]
    }


def paced(n: int, rate: float, submit: Callable[[int], T]) -> list[tuple[float, T]]:
    """Call `submit(i)` for i < n at fixed times, `rate` per second (open loop: a slow call
    does not push back the next one's time); returns (the time it was due, its answer)."""
    start = time.time() + 0.5

    def one(i: int) -> tuple[float, T]:
        due = start + i / rate
        time.sleep(max(0.0, due - time.time()))
        return due, submit(i)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(n)))


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


def epoch(when: datetime) -> float:
    return when.timestamp()  # the columns are aware UTC datetimes


def as_utc(when: datetime | str) -> datetime:
    """A timestamp read with plain SQL: a datetime (PostgreSQL), aware; UTC when naive."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class Flowq:
    """The flowq side: a stack of three processes, workflows submitted over gRPC."""

    def __init__(self, stack: Stack, database_url: str) -> None:
        self.stack = stack
        self.engine = sqlalchemy.create_engine(sync_url(database_url))
        self.clients = [Client(stack.target()) for _ in range(CLIENTS)]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.engine.dispose()

    def _put(self, workload: str, doc: dict) -> str:
        name = f"{workload}-{time.time_ns()}"
        self.stack.put_workflow(name, doc, app_id="bench")
        return name

    def exec_one(self, name: str, i: int) -> str:
        return self.clients[i % CLIENTS].exec_workflow("bench", name).task_id

    def submit(self, name: str, n: int) -> list[str]:
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(
                pool.map(
                    lambda i: self.clients[i % CLIENTS].exec_workflow("bench", name).task_id,
                    range(n),
                )
            )

    def statuses(self, name: str) -> dict[str, int]:
        query = sqlalchemy.text(
            "SELECT status, count(*) FROM tasks WHERE workflow_name = :w GROUP BY status"
        )
        with self.engine.connect() as conn:
            return {status: count for status, count in conn.execute(query, {"w": name})}

    def _wait(self, name: str, n: int, timeout: float = 600) -> None:
        eventually(
            lambda: self.statuses(name).get("SUCCEEDED", 0) == n,
            timeout,
            f"flowq {name}: {n} workflows SUCCEEDED",
        )

    def throughput(self, workload: str, n: int) -> float:
        name = self._put(workload, sleep_workflow(*SHAPES[workload]))
        started = time.monotonic()
        self.submit(name, n)
        self._wait(name, n)
        return time.monotonic() - started

    def latency(self, n: int, rate: float) -> list[dict[str, float]]:
        name = self._put("latency", sleep_workflow(1, 0.0))
        sent = {task: due for due, task in paced(n, rate, partial(self.exec_one, name))}
        self._wait(name, n)
        query = sqlalchemy.text(
            "SELECT t.id, t.enqueued_at, s.started_at, t.finished_at FROM tasks t "
            "JOIN step_runs s ON s.task_id = t.id WHERE t.workflow_name = :w"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"w": name}).all()
        return [
            {
                "submitted": sent[task],
                "enqueued": epoch(enqueued),
                "step_started": epoch(step_started),
                "finished": epoch(finished),
            }
            for task, enqueued, step_started, finished in rows
        ]


class Celery:
    """The peer: a prefork worker, driven by bench/peer/drive.py from the peer's venv."""

    def __init__(self, procs: ProcessGroup, broker: str) -> None:
        self.broker = broker
        redis.Redis.from_url(broker).flushdb()
        self.worker = start_celery_worker(procs, "bench", broker)

    def throughput(self, workload: str, n: int) -> float:
        return float(drive_peer(workload, str(n), str(CLIENTS), broker=self.broker)["seconds"])

    def latency(self, n: int, rate: float) -> list[dict[str, float]]:
        samples = drive_peer("latency", str(n), str(rate), broker=self.broker)["samples"]
        for sample in samples:
            sample["enqueued"] = sample["submitted"]  # apply_async is the enqueue
        return samples


def drive_peer(*args: str, broker: str) -> dict:
    """Run bench/peer/drive.py with `args` in the peer's venv; its JSON answer."""
    done = subprocess.run(
        [str(PEER_PYTHON), "drive.py", *args],
        cwd=PEER,
        env={**os.environ, "BENCH_CELERY_BROKER": broker},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        raise RuntimeError(f"celery {' '.join(args)}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_celery_worker(
    procs: ProcessGroup, name: str, broker: str, concurrency: int = 2
) -> ServiceProcess:
    return procs.start(
        f"celery-{name}",
        [
            str(PEER_PYTHON), "-m", "celery", "-A", "celery_app", "worker",
            "--hostname", f"{name}@%h", "--concurrency", str(concurrency),
            "--pool", "prefork", "--loglevel", "WARNING",
        ],
        {"BENCH_CELERY_BROKER": broker, "PATH": os.environ["PATH"]},
        cwd=PEER,
    )  # fmt: skip


def measured(
    redis_url: str, pids: dict[str, int], pg: PgCounters | None, n: int, run: Callable[[], float]
) -> dict:
    """Run `run` (it returns the seconds its n workflows took) and what it cost."""
    commands = redis_commands(redis_url)
    writes = pg.read() if pg else None
    with Probe(pids) as probe:
        seconds = run()
    cost: dict = {
        "workflows_per_second": n / seconds,
        "redis_commands_per_workflow": (redis_commands(redis_url) - commands) / n,
        "processes": {
            name: {
                "cpu_seconds_per_1000": 1000 * p["cpu_seconds"] / n,
                "peak_memory_mib": p["peak_memory_mib"],
            }
            for name, p in probe.result.items()
        },
    }
    if pg and writes:
        delta = pg.writes_since(writes)
        cost["db_write_transactions_per_workflow"] = delta["write_transactions"] / n
        cost["wal_kib_per_workflow"] = delta["wal_bytes"] / 1024 / n
    return cost


def recovery_flowq(servers: Servers, n: int, rate: float, ledger: Ledger, cap: float) -> dict:
    """kill -9 one of two executors when half the side effects are recorded (n workflows
    submitted at `rate` per second)."""
    database = create_database(servers.postgres)
    prefix = new_key_prefix()
    ledger.reset()
    try:
        with ProcessGroup(tempfile.mkdtemp(prefix="flowq-bench-recovery-")) as procs:
            stack = Stack(procs, database, servers.redis, prefix, extra_env=FLOWQ_ENV, executors=2)
            stack.start()
            step = {
                "name": "record",
                "type": "http",
                "properties": {"url": ledger.url, "method": "POST"},
            }
            stack.put_workflow("record", {"steps": [step]}, app_id="bench")
            flowq = Flowq(stack, database)
            try:
                started = time.monotonic()
                submitter = threading.Thread(
                    target=paced, args=(n, rate, partial(flowq.exec_one, "record")), daemon=True
                )
                submitter.start()
                eventually(lambda: ledger.unique() >= n // 2, 300, "half the ledger")

                def running_owner() -> str | None:
                    with flowq.engine.connect() as conn:
                        return conn.execute(
                            sqlalchemy.text(
                                "SELECT owner_id FROM tasks WHERE status = 'RUNNING' LIMIT 1"
                            )
                        ).scalar_one_or_none()

                # The victim is an executor that holds a task now.
                owner = eventually(running_owner, 30, "an executor holding a task", poll=0.005)
                stack.owner_process(owner)[1].kill()
                killed, killed_at = time.monotonic(), time.time()
                ended = ("SUCCEEDED", "FAILED", "CANCELLED")

                def all_ended() -> bool:
                    statuses = flowq.statuses("record")
                    return sum(statuses.get(s, 0) for s in ended) == n

                try:
                    eventually(all_ended, cap, "flowq recovery", poll=0.02)
                    recovered = time.monotonic() - killed
                except AssertionError:  # not within the cap
                    recovered = None
                submitter.join()
                statuses = flowq.statuses("record")
                # The killed executor's tasks: those the sweep recovered.
                with flowq.engine.connect() as conn:
                    moved, last = conn.execute(
                        sqlalchemy.text(
                            "SELECT count(*), max(finished_at) FROM tasks WHERE id IN "
                            "(SELECT task_id FROM task_events WHERE type = 'recovered')"
                        )
                    ).one()
                orphans_done = None
                if recovered is not None and last is not None:
                    orphans_done = epoch(as_utc(last)) - killed_at
            finally:
                flowq.close()
    finally:
        delete_prefixed_keys(servers.redis, prefix)
        drop_database(servers.postgres, database)
    return {
        "tasks": n,
        "seconds_to_kill": killed - started,
        "seconds_from_kill_to_all_finished": recovered,
        "seconds_from_kill_to_its_tasks_finished": orphans_done,
        "statuses": statuses,
        "recovered_tasks": moved,
        "not_done_at_end": n - statuses.get("SUCCEEDED", 0),
        **ledger.summary(n),
    }


def recovery_celery(
    procs: ProcessGroup, servers: Servers, n: int, rate: float, ledger: Ledger, cap: float
) -> dict:
    """kill -9 one of two workers (the whole process group) when half the ledger is recorded."""
    broker = servers.peer_recovery_redis
    redis.Redis.from_url(broker).flushdb()
    ledger.reset()
    workers = [start_celery_worker(procs, name, broker) for name in ("a", "b")]
    try:
        time.sleep(3)  # both connected before work arrives
        started = time.monotonic()
        submitter = threading.Thread(
            target=drive_peer,
            args=("record", str(n), ledger.url, str(rate)),
            kwargs={"broker": broker},
            daemon=True,
        )
        submitter.start()
        eventually(lambda: ledger.unique() >= n // 2, 300, "half the ledger")
        # The victim is a worker with a task in flight now (hostnames are "a@..." and "b@...").
        busy = eventually(ledger.busy, 30, "a worker with a task in flight", poll=0.005)
        workers[0 if busy[0].startswith("a@") else 1].kill()
        killed = time.monotonic()
        try:
            eventually(lambda: ledger.unique() >= n, cap, "celery recovery", poll=0.02)
            recovered = time.monotonic() - killed
        except AssertionError:  # not within the cap
            recovered = None
        submitter.join(timeout=60)
        # Messages the dead worker took and never acked: the broker hands them out again only
        # after its visibility timeout (one hour by default); until then they are not done.
        time.sleep(1.0)
        held = int(redis.Redis.from_url(broker).hlen("unacked"))
    finally:
        for worker in workers:
            if worker.running():
                worker.terminate()
    return {
        "tasks": n,
        "seconds_to_kill": killed - started,
        "seconds_from_kill_to_all_finished": recovered,
        "seconds_from_kill_to_its_tasks_finished": recovered if held == 0 else None,
        "not_done_at_end": held,
        "waited_seconds": cap,
        **ledger.summary(n),
    }


def machine(servers: Servers) -> dict:
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    pg = sqlalchemy.create_engine(sync_url(servers.postgres))
    with pg.connect() as conn:
        pg_version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
    pg.dispose()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "redis": redis.Redis.from_url(servers.redis).info()["redis_version"],
    }


def median_run(runs: list[dict]) -> dict:
    """The run whose rate is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["workflows_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def latency_summary(samples: list[dict[str, float]], rate: float) -> dict:
    ms = 1000.0
    return {
        "rate_per_second": rate,
        "workflows": len(samples),
        "enqueue_to_step_start_ms": {
            k: v * ms for k, v in percentiles([s["step_started"] - s["enqueued"] for s in samples]).items()
        },
        "submit_to_finished_ms": {
            k: v * ms for k, v in percentiles([s["finished"] - s["submitted"] for s in samples]).items()
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    args = parser.parse_args()
    if args.quick:
        sizes, runs, latency_n, recovery_n, celery_cap = (
            {"w1": 300, "w2": 150, "w3": 100}, 1, 150, 200, 20.0
        )  # fmt: skip
    else:
        sizes, runs, latency_n, recovery_n, celery_cap = (
            {"w1": 2000, "w2": 1000, "w3": 500}, 3, 600, 500, 60.0
        )  # fmt: skip
    if not PEER_PYTHON.exists():
        raise SystemExit(
            "the peer's venv is missing: run `make bench` (it creates bench/.venv-celery)"
        )

    results: dict[str, dict[str, list[dict]]] = {w: {"flowq": [], "celery": []} for w in sizes}
    latency: dict[str, dict] = {}
    recovery: dict[str, dict] = {}
    with contextlib.ExitStack() as cleanup:
        servers = find_servers(cleanup)
        database = create_database(servers.postgres)
        cleanup.callback(drop_database, servers.postgres, database)
        prefix = new_key_prefix()
        cleanup.callback(delete_prefixed_keys, servers.redis, prefix)
        pg = cleanup.enter_context(contextlib.closing(PgCounters(sync_url(servers.postgres))))
        procs = cleanup.enter_context(ProcessGroup(tempfile.mkdtemp(prefix="flowq-bench-")))
        stack = Stack(procs, database, servers.redis, prefix, extra_env=FLOWQ_ENV).start()
        celery = Celery(procs, servers.peer_redis)
        flowq = Flowq(stack, database)
        cleanup.callback(flowq.close)
        shared = {"postgres": pg.postmaster_pid(), "redis": redis_pid(servers.redis)}
        flowq_pids = {
            **{r: stack.processes[r].pid for r in ("apiserver", "dispatcher", "executor")},
            **shared,
        }
        celery_pids = {"celery worker": celery.worker.pid, "redis": shared["redis"]}
        for workload, n in sizes.items():
            for run in range(runs):
                # Alternate who goes first, so neither always gets the warmer machine.
                order = ("flowq", "celery") if run % 2 == 0 else ("celery", "flowq")
                for system in order:
                    if system == "flowq":
                        go = partial(flowq.throughput, workload, n)
                        cost = measured(servers.redis, flowq_pids, pg, n, go)
                    else:
                        go = partial(celery.throughput, workload, n)
                        cost = measured(servers.redis, celery_pids, None, n, go)
                    results[workload][system].append(cost)
                    print(
                        f"{workload} {system} run {run + 1}: "
                        f"{cost['workflows_per_second']:.1f} workflows/s",
                        flush=True,
                    )
        rate = round(
            statistics.median(r["workflows_per_second"] for r in results["w1"]["flowq"]) / 2
        )
        for name, system in (("flowq", flowq), ("celery", celery)):
            latency[name] = latency_summary(system.latency(latency_n, rate), rate)
            print(f"latency {name}: {latency[name]}", flush=True)
        with Ledger() as ledger:
            recovery["flowq"] = recovery_flowq(servers, recovery_n, rate, ledger, cap=120.0)
            print(f"recovery flowq: {recovery['flowq']}", flush=True)
            recovery["celery"] = recovery_celery(
                procs, servers, recovery_n, rate, ledger, cap=celery_cap
            )
            print(f"recovery celery: {recovery['celery']}", flush=True)
        about = machine(servers)

    report = {
        "machine": about,
        "quick": args.quick,
        "sizes": sizes,
        "runs": runs,
        "workloads": {
            w: {
                system: {
                    "runs": [r["workflows_per_second"] for r in rounds],
                    "median": statistics.median(r["workflows_per_second"] for r in rounds),
                    "median_run": median_run(rounds),
                }
                for system, rounds in by_system.items()
            }
            for w, by_system in results.items()
        },
        "latency": latency,
        "recovery": recovery,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (out / "latest.md").write_text(text)
    print(text)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def render(report: dict) -> str:
    sizes, workloads = report["sizes"], report["workloads"]

    def runs(result: dict) -> str:
        return f"{result['median']:.1f} (" + ", ".join(f"{r:.1f}" for r in result["runs"]) + ")"

    lines = _table(
        ["workload", "flowq workflows/s", "Celery workflows/s", "flowq / Celery"],
        [
            [
                f"{w.upper()} ({sizes[w]})",
                runs(by["flowq"]),
                runs(by["celery"]),
                f"{by['flowq']['median'] / by['celery']['median']:.2f}",
            ]
            for w, by in workloads.items()
        ],
    )
    cost_rows = []
    for w, by in workloads.items():
        for system, result in by.items():
            m = result["median_run"]
            procs = m["processes"].items()
            cost_rows.append(
                [
                    w.upper(),
                    system,
                    ", ".join(f"{name} {p['cpu_seconds_per_1000']:.1f}" for name, p in procs),
                    ", ".join(f"{name} {p['peak_memory_mib']:.0f}" for name, p in procs),
                    f"{m['redis_commands_per_workflow']:.1f}",
                    f"{m['db_write_transactions_per_workflow']:.1f}"
                    if "db_write_transactions_per_workflow" in m
                    else "none (no database)",
                    f"{m['wal_kib_per_workflow']:.1f}" if "wal_kib_per_workflow" in m else "-",
                ]
            )
    lines += _table(
        [
            "workload", "system", "CPU s per 1,000 workflows", "peak memory (PSS) MiB",
            "Redis commands per workflow", "DB write transactions per workflow",
            "WAL KiB per workflow",
        ],
        cost_rows,
    )  # fmt: skip
    latency_rows = []
    for system, lat in report["latency"].items():
        e, f = lat["enqueue_to_step_start_ms"], lat["submit_to_finished_ms"]
        latency_rows.append(
            [
                f"{system} ({lat['workflows']})",
                str(lat["rate_per_second"]),
                f"{e['p50']:.1f} / {e['p95']:.1f} / {e['p99']:.1f}",
                f"{f['p50']:.1f} / {f['p99']:.1f}",
            ]
        )
    lines += _table(
        [
            "latency (one-step workflows at a fixed rate)", "rate /s",
            "enqueue → step start p50 / p95 / p99 ms", "submit → finished p50 / p99 ms",
        ],
        latency_rows,
    )  # fmt: skip
    recovery_rows = []
    for system, rec in report["recovery"].items():

        def seconds(value: float | None, rec: dict = rec) -> str:
            waited = rec.get("waited_seconds", 120)
            return f"{value:.1f}" if value is not None else f"not within {waited:.0f} s"

        recovery_rows.append(
            [
                system,
                str(rec["tasks"]),
                seconds(rec["seconds_from_kill_to_its_tasks_finished"]),
                seconds(rec["seconds_from_kill_to_all_finished"]),
                str(rec["ran_twice"]),
                str(rec["lost"]),
                str(rec["not_done_at_end"]),
            ]
        )
    lines += _table(
        [
            "recovery (kill -9 one of two executors / workers halfway)", "tasks",
            "s from kill until the killed one's tasks finished", "s from kill until all finished",
            "ran twice", "lost", "not done at the end",
        ],
        recovery_rows,
    )  # fmt: skip
    return "\n".join(lines) + f"\nmachine: {report['machine']}\n"


if __name__ == "__main__":
    main()
