"""`make bench`: flowq beside Celery on this machine, in one run, alternating.

Workloads (the same work for both):
- W1: one-step no-op workflows (flowq: a `sleep 0` step; Celery: one task, acks_late, results on).
- W2: three-step serial workflows (Celery: a chain of three tasks).

flowq runs as three processes (one apiserver, one dispatcher, one executor) on PostgreSQL and
Redis; Celery as one prefork worker with two processes (this machine's cores) on Redis. Each
number is workflows per second, from the first submit to the last workflow finished, as a
client sees it; 16 clients submit concurrently. The median of the runs is reported.

    .venv/bin/python bench/run.py [--quick]      (make bench / make bench-quick)

Writes bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy  # noqa: E402

from flowq.client import Client  # noqa: E402
from flowq.db import sync_url  # noqa: E402
from tests.support.pg import create_database, drop_database  # noqa: E402
from tests.support.procs import ProcessGroup  # noqa: E402
from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

REDIS = os.environ.get("FLOWQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PEER_REDIS = REDIS.rsplit("/", 1)[0] + "/15"  # the peer gets its own database, flushed
POSTGRES_ADMIN = os.environ.get(
    "FLOWQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PEER = ROOT / "bench" / "peer"
PEER_PYTHON = ROOT / "bench" / ".venv-celery" / "bin" / "python"
CLIENTS = 16
STEPS = {"w1": 1, "w2": 3}


def workflow(steps: int) -> dict:
    return {
        "steps": [
            {"name": f"s{i}", "type": "sleep", "properties": {"seconds": 0}} for i in range(steps)
        ]
    }


def run_flowq(stack: Stack, workload: str, n: int) -> float:
    name = f"{workload}-{time.time_ns()}"
    stack.put_workflow(name, workflow(STEPS[workload]), app_id="bench")
    engine = sqlalchemy.create_engine(sync_url(stack.database_url))
    clients = [Client(stack.target()) for _ in range(CLIENTS)]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda i: clients[i % CLIENTS].exec_workflow("bench", name), range(n)))
        query = sqlalchemy.text(
            "SELECT count(*) FROM tasks WHERE workflow_name = :w AND status = 'SUCCEEDED'"
        )
        deadline = started + 600
        while True:
            with engine.connect() as conn:
                done = conn.execute(query, {"w": name}).scalar_one()
            if done == n:
                return n / (time.monotonic() - started)
            if time.monotonic() > deadline:
                raise RuntimeError(f"flowq {workload}: {done}/{n} finished after 600 s")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
        engine.dispose()


def run_celery(workload: str, n: int) -> float:
    done = subprocess.run(
        [str(PEER_PYTHON), "drive.py", workload, str(n), str(CLIENTS)],
        cwd=PEER,
        env={**os.environ, "BENCH_CELERY_BROKER": PEER_REDIS},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        raise RuntimeError(f"celery {workload}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["n"] / result["seconds"]


def start_celery(procs: ProcessGroup) -> object:
    redis.Redis.from_url(PEER_REDIS).flushdb()
    worker = procs.start(
        "celery-worker",
        [
            str(PEER_PYTHON), "-m", "celery", "-A", "celery_app", "worker",
            "--concurrency", "2", "--pool", "prefork", "--loglevel", "WARNING",
        ],
        {"BENCH_CELERY_BROKER": PEER_REDIS, "PATH": os.environ["PATH"]},
        cwd=PEER,
    )  # fmt: skip
    return worker


def machine() -> dict:
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    pg = sqlalchemy.create_engine(sync_url(POSTGRES_ADMIN))
    with pg.connect() as conn:
        pg_version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
    pg.dispose()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "redis": redis.Redis.from_url(REDIS).info()["redis_version"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    args = parser.parse_args()
    sizes = {"w1": 300, "w2": 150} if args.quick else {"w1": 2000, "w2": 1000}
    runs = 1 if args.quick else 3
    if not PEER_PYTHON.exists():
        raise SystemExit(
            "the peer's venv is missing: run `make bench` (it creates bench/.venv-celery)"
        )

    results: dict[str, dict[str, list[float]]] = {w: {"flowq": [], "celery": []} for w in sizes}
    database = create_database(POSTGRES_ADMIN)
    prefix = new_key_prefix()
    try:
        with ProcessGroup(tempfile.mkdtemp(prefix="flowq-bench-")) as procs:
            env = {"FLOWQ_LOG_LEVEL": "WARNING", "FLOWQ_CLAIM_IDLE_MS": "15000"}
            stack = Stack(procs, database, REDIS, prefix, extra_env=env).start()
            start_celery(procs)
            for workload, n in sizes.items():
                for run in range(runs):
                    # Alternate who goes first, so neither always gets the warmer machine.
                    order = ("flowq", "celery") if run % 2 == 0 else ("celery", "flowq")
                    for system in order:
                        rate = (
                            run_flowq(stack, workload, n)
                            if system == "flowq"
                            else run_celery(workload, n)
                        )
                        results[workload][system].append(rate)
                        print(
                            f"{workload} {system} run {run + 1}: {rate:.1f} workflows/s", flush=True
                        )
    finally:
        delete_prefixed_keys(REDIS, prefix)
        drop_database(POSTGRES_ADMIN, database)

    report = {
        "machine": machine(),
        "quick": args.quick,
        "sizes": sizes,
        "runs": runs,
        "workloads": {
            w: {
                system: {"runs": rates, "median": statistics.median(rates)}
                for system, rates in by_system.items()
            }
            for w, by_system in results.items()
        },
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| workload | flowq workflows/s | Celery workflows/s | flowq / Celery |",
        "|---|---|---|---|",
    ]
    for w, by_system in report["workloads"].items():
        f, c = by_system["flowq"]["median"], by_system["celery"]["median"]
        lines.append(f"| {w.upper()} ({sizes[w]}) | {f:.1f} | {c:.1f} | {f / c:.2f} |")
    table = "\n".join(lines)
    (out / "latest.md").write_text(f"{table}\n\nmachine: {report['machine']}\n")
    print(table)
    print(f"machine: {report['machine']}")


if __name__ == "__main__":
    main()
