"""Runs one workload against the Celery peer and prints its result as JSON (run with the peer's
venv, from bench/run.py): N workflows submitted by `clients` threads, then every result awaited.

    python drive.py WORKLOAD N CLIENTS      WORKLOAD: w1 (one no-op step), w2 (a chain of three)
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from celery import chain
from celery_app import step


def submit(workload: str):
    if workload == "w1":
        return step.delay(0)
    if workload == "w2":
        return chain(step.si(0), step.si(0), step.si(0)).apply_async()
    raise SystemExit(f"unknown workload {workload}")


def main() -> None:
    workload, n, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    submit(workload).get(timeout=60)  # warm: the worker is up and connected
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: submit(workload), range(n)))
    submitted = time.monotonic()
    for result in results:
        result.get(timeout=600)
    finished = time.monotonic()
    print(
        json.dumps({"n": n, "submit_seconds": submitted - started, "seconds": finished - started})
    )


if __name__ == "__main__":
    main()
