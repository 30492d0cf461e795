"""Task-change notifications, so watchers wait on Redis pub/sub instead of polling SQL.

Writers publish the task id on the `<prefix>:task-changes` channel: the executor after every
committed write of a task, through a `ChangeNotifier` (which coalesces bursts per task and
never blocks the writer), and the apiserver after a cancel. Each apiserver runs one
`ChangeListener` subscription and wakes the watchers of that task. SQL stays the truth: a
watcher re-reads the task on every wake-up, and every few seconds anyway in case a message
was lost (Redis away), so a lost message only delays an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from flowq.channels import IDLE_BEAT_SECONDS, follow
from flowq.keys import Keys
from flowq.supervise import beat

log = logging.getLogger(__name__)


class ChangeNotifier:
    """Publishes changed task ids from a background loop; `changed()` never waits."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.channel = keys.task_changes
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def changed(self, task_id: str) -> None:
        self._dirty.add(task_id)  # bounded by the tasks this process writes
        self._wake.set()

    async def run(self) -> None:
        while True:
            beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_BEAT_SECONDS)
            self._wake.clear()
            if not self._dirty:
                continue
            batch, self._dirty = self._dirty, set()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for task_id in batch:
                        pipe.publish(self.channel, task_id)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                # Watchers fall back to reading SQL now and then; nothing is lost.
                log.debug("task changes not published", extra={"error": str(exc)})


class ChangeListener:
    """One subscription per process; `watching(task_id)` gives an Event set on each change."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.channel = keys.task_changes
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def watching(self, task_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers[task_id].add(event)
        try:
            yield event
        finally:
            self._watchers[task_id].discard(event)
            if not self._watchers[task_id]:
                del self._watchers[task_id]

    def _wake(self, task_id: str) -> None:
        for event in self._watchers.get(task_id, ()):
            event.set()

    def _wake_all(self) -> None:
        """Changes missed while unsubscribed: every watcher reads once more."""
        for task_id in list(self._watchers):
            self._wake(task_id)

    async def run(self) -> None:
        await follow(
            self.redis,
            self.channel,
            self._wake,
            lost="task-change channel lost; watchers read SQL every few seconds until it is back",
            on_subscribed=self._wake_all,
        )
