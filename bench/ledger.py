"""A ledger of side effects for the recovery benchmark: an HTTP server that writes down every
request it gets, keyed by who sent it, so a run can count the work that ran twice or never.

flowq's `http` step names its task in `X-Flowq-Task-Id`; the Celery peer's task sends
`X-Ledger-Key`, and its worker's name in `X-Ledger-Worker`. Each request is answered after
`delay` seconds, so work is in flight when a worker is killed; `busy()` says which workers
have requests in flight now.
"""

from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flowq.netutil import free_port


class Ledger:
    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self._counts: collections.Counter[str] = collections.Counter()
        self._in_flight: collections.Counter[str] = collections.Counter()  # by worker
        self._lock = threading.Lock()
        ledger = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                key = self.headers.get("X-Flowq-Task-Id") or self.headers.get("X-Ledger-Key")
                worker = self.headers.get("X-Ledger-Worker", "")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with ledger._lock:
                    ledger._counts[key or "(no key)"] += 1
                    ledger._in_flight[worker] += 1
                time.sleep(ledger.delay)
                with ledger._lock:
                    ledger._in_flight[worker] -= 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/record"

    def __enter__(self) -> Ledger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def busy(self) -> list[str]:
        """Workers (as they named themselves) with a request in flight now."""
        with self._lock:
            return [w for w, n in self._in_flight.items() if n > 0]

    def unique(self) -> int:
        with self._lock:
            return len(self._counts)

    def summary(self, expected: int) -> dict[str, int]:
        """Keys seen, keys recorded more than once (ran twice), keys never recorded (lost)."""
        with self._lock:
            seen = len(self._counts)
            twice = sum(1 for n in self._counts.values() if n > 1)
            extra = sum(n - 1 for n in self._counts.values() if n > 1)
        return {"recorded": seen, "ran_twice": twice, "extra_runs": extra, "lost": expected - seen}
