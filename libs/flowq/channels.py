"""Following a Redis pub/sub channel for as long as the process lives.

`follow()` subscribes, hands every message to `on_message`, and when Redis goes away logs
`lost` once per outage and subscribes again with backoff. It beats the supervisor (a quiet
channel is not a wedged loop). Messages published while unsubscribed are gone: callers keep
the truth elsewhere (SQL) and use `on_subscribed` to catch up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from flowq.backoff import Backoff
from flowq.supervise import beat

log = logging.getLogger(__name__)

IDLE_BEAT_SECONDS = 30.0  # a quiet channel still wakes this often, to show the loop is alive


async def follow(
    redis: aioredis.Redis,
    channel: str,
    on_message: Callable[[str], Awaitable[None] | None],
    *,
    lost: str,
    retry_cap_seconds: float = 5.0,
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    backoff = Backoff(base=0.2, cap=retry_cap_seconds)
    while True:
        beat()
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            backoff.reset()
            on_subscribed()
            while True:
                beat()
                message = await pubsub.get_message(timeout=IDLE_BEAT_SECONDS)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    handled = on_message(data.decode() if isinstance(data, bytes) else str(data))
                    if handled is not None:
                        await handled
        except (RedisError, OSError) as exc:
            log.warning(lost, extra={"error": str(exc), "channel": channel})
            await asyncio.sleep(backoff.next())
        finally:
            await pubsub.aclose()
