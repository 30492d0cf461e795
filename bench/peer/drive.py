"""Runs one workload against the Celery peer and prints its result as JSON (run with the peer's
venv, from bench/run.py).

    python drive.py w1|w2|w3 N CLIENTS     N workflows by CLIENTS threads, every result awaited
    python drive.py latency N RATE         N one-step workflows at RATE per second, open loop
    python drive.py record N LEDGER_URL RATE   submit N ledger-recording tasks, RATE per second
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from celery import chain
from celery_app import record, stamp, step


def submit(workload: str):
    if workload == "w1":
        return step.delay(0)
    if workload == "w2":
        return chain(step.si(0), step.si(0), step.si(0)).apply_async()
    if workload == "w3":
        return chain(step.si(0.01), step.si(0.01), step.si(0.01)).apply_async()
    raise SystemExit(f"unknown workload {workload}")


def throughput(workload: str, n: int, clients: int) -> dict:
    submit(workload).get(timeout=60)  # warm: the worker is up and connected
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: submit(workload), range(n)))
    submitted = time.monotonic()
    for result in results:
        result.get(timeout=600)
    finished = time.monotonic()
    return {"n": n, "submit_seconds": submitted - started, "seconds": finished - started}


def paced(n: int, rate: float, submit) -> list:
    """Call submit(i) at fixed times, `rate` per second (open loop: a late submit does not
    delay the next one's); returns (the time it was due, its answer) for each."""
    start = time.time() + 0.5

    def one(i: int) -> tuple[float, object]:
        due = start + i / rate
        time.sleep(max(0.0, due - time.time()))
        return due, submit(i)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def latency(n: int, rate: float) -> dict:
    stamp.delay().get(timeout=60)
    sent = paced(n, rate, lambda _: stamp.delay())
    samples = []
    for due, result in sent:
        started = result.get(timeout=600)
        samples.append(
            {"submitted": due, "step_started": started, "finished": _epoch(result.date_done)}
        )
    return {"samples": samples}


def _epoch(when) -> float:
    """A result's date_done (a datetime, or an ISO string from some backends; UTC if naive)."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "latency":
        out = latency(n, float(sys.argv[3]))
    elif mode == "record":
        ledger_url, rate = sys.argv[3], float(sys.argv[4])
        paced(n, rate, lambda i: record.delay(ledger_url, f"r{i}"))
        out = {"submitted": n}
    else:
        out = throughput(mode, n, int(sys.argv[3]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
