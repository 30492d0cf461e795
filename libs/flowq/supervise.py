"""Supervised background loops: a crash is logged, counted and restarted with backoff.

A loop that must live (consumer, claimer, sweep, heartbeat) never silently ends the process
and never spins: each restart waits longer, up to FLOWQ_BACKOFF_MAX_SECONDS.

A loop that is alive but stuck (awaiting something that never comes) is caught too: loops
call `beat()` on every round, and a loop whose last beat is older than its `stall_after`
counts as wedged, which turns liveness NOT_SERVING (the orchestrator restarts the process).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from flowq.backoff import Backoff

log = logging.getLogger(__name__)

LOOP_RESTARTS = Counter(
    "flowq_loop_restarts_total", "Background loops restarted after an unexpected error.", ["loop"]
)


DEFAULT_STALL_AFTER_SECONDS = 180.0

_CURRENT: contextvars.ContextVar[tuple[Supervisor, str] | None] = contextvars.ContextVar(
    "flowq_supervised_loop", default=None
)


def beat() -> None:
    """Record progress of the supervised loop this code runs in (a no-op elsewhere)."""
    current = _CURRENT.get()
    if current is not None:
        supervisor, name = current
        supervisor._beats[name] = time.monotonic()


class Supervisor:
    """Owns a fixed set of named loops; `stop()` cancels and awaits every one of them."""

    def __init__(self, backoff_max_seconds: float = 300.0) -> None:
        self.backoff_max_seconds = backoff_max_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._beats: dict[str, float] = {}
        self._stall_after: dict[str, float | None] = {}

    def spawn(
        self,
        name: str,
        loop: Callable[[], Awaitable[None]],
        stall_after: float | None = None,
        *,
        watched: bool = True,
    ) -> None:
        """Run `loop()` until it returns; restart it with backoff when it raises. A `watched`
        loop that goes `stall_after` seconds without calling `beat()` is wedged. The default
        bound outlasts the longest backoff sleep (twice FLOWQ_BACKOFF_MAX_SECONDS, at least
        DEFAULT_STALL_AFTER_SECONDS), so a long outage of a dependency is never mistaken for
        a wedge."""
        if name in self._tasks:
            raise ValueError(f"loop {name!r} already running")
        if stall_after is None:
            stall_after = max(DEFAULT_STALL_AFTER_SECONDS, 2 * self.backoff_max_seconds)
        self._beats[name] = time.monotonic()
        self._stall_after[name] = stall_after if watched else None
        self._tasks[name] = asyncio.create_task(self._run(name, loop), name=name)

    def wedged(self) -> list[str]:
        """Loops still running whose last beat is older than their stall bound."""
        now = time.monotonic()
        return [
            name
            for name, task in self._tasks.items()
            if not task.done()
            and (bound := self._stall_after.get(name)) is not None
            and now - self._beats.get(name, now) > bound
        ]

    async def _run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        _CURRENT.set((self, name))
        backoff = Backoff(base=0.5, cap=self.backoff_max_seconds)
        while True:
            self._beats[name] = time.monotonic()  # a (re)start is progress
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next()
                LOOP_RESTARTS.labels(loop=name).inc()
                log.exception(
                    "loop crashed; restarting",
                    extra={
                        "loop": name,
                        "restarts": backoff.failures,
                        "restart_in_seconds": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)

    def alive(self) -> bool:
        """False when a loop ended by itself (a loop that must live has stopped)."""
        return all(not task.done() for task in self._tasks.values())

    async def wait(self, *names: str, timeout: float) -> None:
        """Wait up to `timeout` seconds for the named loops to return by themselves."""
        tasks = [self._tasks[name] for name in names if name in self._tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def stop(self, *names: str, timeout: float = 10.0) -> None:
        """Cancel the named loops (all when none named) and wait for them, in the order given."""
        for name in names or list(self._tasks):
            task = self._tasks.pop(name, None)
            if task is None:
                continue
            task.cancel()
            try:
                await asyncio.wait_for(task, timeout)
            except (asyncio.CancelledError, TimeoutError):
                pass
            except Exception:
                log.exception("loop failed while stopping", extra={"loop": name})
