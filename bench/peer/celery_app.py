"""The peer for `make bench`: Celery with a Redis broker and result backend, doing the same work
as flowq's benchmark workflows. Tasks are acknowledged late (`acks_late`), as flowq never acks
work it has not handed over. Runs in its own venv (bench/.venv-celery), configured by
BENCH_CELERY_BROKER (a Redis URL).
"""

import os
import time
import urllib.request

from celery import Celery

broker = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15")
app = Celery("flowq_bench_peer", broker=broker, backend=broker)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task
def step(seconds: float = 0.0) -> None:
    """One step: sleep `seconds` (0: a no-op)."""
    if seconds:
        time.sleep(seconds)


@app.task
def stamp() -> float:
    """A no-op step that says when it started (for the latency workload)."""
    return time.time()


@app.task(bind=True)
def record(self, ledger_url: str, key: str) -> None:
    """A step with a side effect: tell the ledger that `key` ran, and on which worker (the
    recovery workload)."""
    headers = {"X-Ledger-Key": key, "X-Ledger-Worker": self.request.hostname or ""}
    request = urllib.request.Request(ledger_url, data=b"", headers=headers)
    with urllib.request.urlopen(request, timeout=30):
        pass
