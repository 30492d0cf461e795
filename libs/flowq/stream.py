"""Stream primitives of the dispatch path: the envelope, XADD, group, XREADGROUP, XACK, claims.

The Redis Stream is only the delivery path; SQL is the truth. An entry carries a versioned
envelope `{v, taskId, attempt, enqueuedAt}`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from flowq.errors import InvalidArgumentError
from flowq.keys import Keys

ENVELOPE_VERSION = 1

Fields = Mapping[bytes | str, bytes | str]
Entry = tuple[str, dict[str, str]]


def connect(url: str) -> aioredis.Redis:
    """A Redis client with deadlines on every call (reads block at most a few seconds).

    A command that meets a dead pooled connection (Redis restarted) is retried at once on a
    fresh one, twice at most; longer outages are the callers' to handle with their own backoff.
    """
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        retry_on_error=[RedisConnectionError],
        decode_responses=False,
    )


class EnvelopeError(InvalidArgumentError):
    """A stream entry that cannot be decoded; retrying cannot help."""


@dataclass(frozen=True)
class Envelope:
    task_id: str
    attempt: int
    enqueued_at_ms: int

    @classmethod
    def new(cls, task_id: str, attempt: int) -> Envelope:
        return cls(task_id=task_id, attempt=attempt, enqueued_at_ms=int(time.time() * 1000))

    def to_fields(self) -> dict[str, str]:
        return {
            "v": str(ENVELOPE_VERSION),
            "taskId": self.task_id,
            "attempt": str(self.attempt),
            "enqueuedAt": str(self.enqueued_at_ms),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Envelope:
        version = fields.get("v")
        if version != str(ENVELOPE_VERSION):
            raise EnvelopeError(
                f"unsupported envelope version {version!r} (expected {ENVELOPE_VERSION})"
            )
        task_id = fields.get("taskId", "")
        if not task_id or len(task_id) > 64:
            raise EnvelopeError(f"bad taskId {task_id!r}")
        try:
            attempt = int(fields.get("attempt", ""))
            enqueued = int(fields.get("enqueuedAt", "0"))
        except ValueError as exc:
            raise EnvelopeError(f"bad number in envelope: {exc}") from None
        if attempt < 1:
            raise EnvelopeError(f"bad attempt {attempt}")
        return cls(task_id=task_id, attempt=attempt, enqueued_at_ms=enqueued)


def decode_fields(fields: Fields) -> dict[str, str]:
    """Entry fields as text (undecodable bytes are kept, replaced, for the dead-letter record)."""
    out = {}
    for key, value in fields.items():
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        v = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        out[k] = v
    return out


def _entries(raw: list) -> list[Entry]:
    return [(_text(entry_id), decode_fields(fields or {})) for entry_id, fields in raw]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def enqueue(redis: aioredis.Redis, keys: Keys, envelope: Envelope) -> str:
    """XADD the envelope to the dispatch stream; returns the entry id."""
    return _text(await redis.xadd(keys.dispatch, envelope.to_fields()))


async def ensure_group(redis: aioredis.Redis, keys: Keys) -> None:
    """Create the consumer group (and the stream) if missing; reading starts at the beginning."""
    try:
        await redis.xgroup_create(keys.dispatch, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read(
    redis: aioredis.Redis, keys: Keys, consumer: str, count: int, block_ms: int
) -> list[Entry]:
    """XREADGROUP new entries for `consumer`; recreates the group if Redis lost it."""
    try:
        reply = await redis.xreadgroup(
            keys.group, consumer, {keys.dispatch: ">"}, count=count, block=block_ms
        )
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await ensure_group(redis, keys)
        return []
    return [entry for _stream, raw in reply or [] for entry in _entries(raw)]


async def ack(redis: aioredis.Redis, keys: Keys, *entry_ids: str) -> None:
    """XACK and XDEL in one MULTI: a handled entry leaves the stream (its length is the backlog)."""
    if not entry_ids:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xack(keys.dispatch, keys.group, *entry_ids)
        pipe.xdel(keys.dispatch, *entry_ids)
        await pipe.execute()


async def autoclaim(
    redis: aioredis.Redis, keys: Keys, consumer: str, min_idle_ms: int, cursor: str, count: int
) -> tuple[str, list[Entry]]:
    """XAUTOCLAIM entries idle longer than `min_idle_ms`; returns the next cursor and the entries."""
    try:
        reply = await redis.xautoclaim(
            keys.dispatch, keys.group, consumer, min_idle_ms, start_id=cursor, count=count
        )
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await ensure_group(redis, keys)
        return "0-0", []
    next_cursor, raw = _text(reply[0]), reply[1]
    # Entries deleted from the stream while pending come back as (id, None): they are gone.
    return next_cursor, [entry for entry in _entries(raw) if entry[1]]


async def set_delivery_count(
    redis: aioredis.Redis, keys: Keys, consumer: str, entry_id: str, count: int
) -> None:
    """XCLAIM the entry for `consumer` with its delivery counter set to `count` (and idle 0):
    a delivery that failed because a dependency was down does not count against the entry."""
    await redis.xclaim(
        keys.dispatch, keys.group, consumer, 0, [entry_id], retrycount=count, justid=True
    )


async def delivery_counts(
    redis: aioredis.Redis, keys: Keys, entry_ids: list[str]
) -> dict[str, int]:
    """How many times each pending entry was delivered (XPENDING's counter); one round trip."""
    counts: dict[str, int] = {}
    if not entry_ids:
        return counts
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id in entry_ids:
            pipe.xpending_range(keys.dispatch, keys.group, min=entry_id, max=entry_id, count=1)
        replies = await pipe.execute()
    for entry_id, rows in zip(entry_ids, replies, strict=True):
        if rows:
            counts[entry_id] = int(rows[0]["times_delivered"])
    return counts


async def dead_letter(
    redis: aioredis.Redis,
    keys: Keys,
    entry_id: str,
    fields: Mapping[str, str],
    *,
    reason: str,
    attempts: int,
    last_error: str,
) -> None:
    """Move an entry to the dead-letter stream: XADD dlq, XACK and XDEL in one MULTI/EXEC."""
    record = {
        **{f"field:{k}": v for k, v in fields.items()},
        "originalId": entry_id,
        "reason": reason,
        "attempts": str(attempts),
        "lastError": last_error[:2000],
        "deadAt": str(int(time.time() * 1000)),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.dead_letters, record)
        pipe.xack(keys.dispatch, keys.group, entry_id)
        pipe.xdel(keys.dispatch, entry_id)
        await pipe.execute()
