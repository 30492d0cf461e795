"""Queue statistics and dead-letter administration (use cases on Redis)."""

from __future__ import annotations

import logging
import re
import time

import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2
from redis.exceptions import ResponseError

from flowq.db import Database
from flowq.errors import InvalidArgumentError
from flowq.keys import Keys
from flowq.stream import decode_fields
from flowq.v1 import queue_service_pb2 as pb
from flowq_dispatcher.handling import abandon, unpark

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


async def queue_stats(redis: aioredis.Redis, keys: Keys) -> pb.QueueStats:
    stats = pb.QueueStats(stream=keys.dispatch)
    stats.length = await redis.xlen(keys.dispatch)
    stats.dead_letters = await redis.xlen(keys.dead_letters)
    try:
        groups = await redis.xinfo_groups(keys.dispatch)
    except ResponseError:  # no stream yet
        groups = []
    for group in groups:
        if _text(group["name"]) != keys.group:
            continue
        stats.pending = int(group.get("pending") or 0)
        stats.lag = int(group.get("lag") or 0)
    if stats.pending:
        summary = await redis.xpending_range(keys.dispatch, keys.group, min="-", max="+", count=1)
        if summary:
            oldest_ms = int(_text(summary[0]["message_id"]).split("-")[0])
            stats.oldest_pending_age_ms = max(0, int(time.time() * 1000) - oldest_ms)
        for consumer in await redis.xinfo_consumers(keys.dispatch, keys.group):
            stats.consumers.append(
                pb.ConsumerInfo(
                    name=_text(consumer["name"]),
                    pending=int(consumer["pending"]),
                    idle_ms=int(consumer["idle"]),
                )
            )
    elif groups:
        for consumer in await redis.xinfo_consumers(keys.dispatch, keys.group):
            stats.consumers.append(
                pb.ConsumerInfo(
                    name=_text(consumer["name"]),
                    pending=int(consumer["pending"]),
                    idle_ms=int(consumer["idle"]),
                )
            )
    return stats


def _dead_letter(entry_id: str, raw: dict[str, str]) -> pb.DeadLetter:
    original = {k.removeprefix("field:"): v for k, v in raw.items() if k.startswith("field:")}
    dead_at = int(raw.get("deadAt", "0") or 0)
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(dead_at)
    return pb.DeadLetter(
        id=entry_id,
        original_id=raw.get("originalId", ""),
        task_id=original.get("taskId", ""),
        reason=raw.get("reason", ""),
        attempts=int(raw.get("attempts", "0") or 0),
        last_error=raw.get("lastError", ""),
        time=ts,
        fields=original,
    )


async def list_dead_letters(
    redis: aioredis.Redis, keys: Keys, size: int, token: str
) -> tuple[list[pb.DeadLetter], str]:
    """Newest first; the page token is the id to continue before."""
    if size < 0:
        raise InvalidArgumentError("page_size must not be negative", field="page_size")
    limit = min(size or PAGE_SIZE, MAX_PAGE_SIZE)
    if token and not STREAM_ID.match(token):
        raise InvalidArgumentError(
            "page_token is not valid: pass next_page_token from a previous response",
            field="page_token",
        )
    top = f"({token}" if token else "+"
    rows = await redis.xrevrange(keys.dead_letters, max=top, min="-", count=limit + 1)
    items = [_dead_letter(_text(i), decode_fields(f)) for i, f in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else "")


async def _select(
    redis: aioredis.Redis, keys: Keys, ids: list[str], everything: bool
) -> list[tuple[str, dict]]:
    if everything == bool(ids):
        raise InvalidArgumentError("give either ids or all=true", field="ids")
    if everything:
        rows = await redis.xrange(keys.dead_letters, min="-", max="+")
        return [(_text(i), decode_fields(f)) for i, f in rows]
    found = []
    for entry_id in ids:
        if not STREAM_ID.match(entry_id):
            raise InvalidArgumentError(
                f"{entry_id!r} is not a dead-letter id (like 1700000000000-0)", field="ids"
            )
        rows = await redis.xrange(keys.dead_letters, min=entry_id, max=entry_id)
        found.extend((_text(i), decode_fields(f)) for i, f in rows)
    return found


async def replay(
    redis: aioredis.Redis, keys: Keys, db: Database, ids: list[str], everything: bool
) -> int:
    """Put dead letters back on the dispatch stream as new entries (delivery count starts again);
    each leaves the dead-letter stream in the same MULTI that re-enqueues it."""
    replayed: list[str] = []
    for entry_id, raw in await _select(redis, keys, ids, everything):
        original = {k.removeprefix("field:"): v for k, v in raw.items() if k.startswith("field:")}
        if not original:
            continue
        original["enqueuedAt"] = str(int(time.time() * 1000))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.dispatch, original)
            pipe.xdel(keys.dead_letters, entry_id)
            await pipe.execute()
        replayed.append(original.get("taskId", ""))
    try:
        await unpark(db, [t for t in replayed if t])
    except Exception as exc:  # noqa: BLE001 - the entries are back on the stream and will run
        log.warning("replayed, but could not un-park the tasks", extra={"error": str(exc)})
    return len(replayed)


async def purge(
    redis: aioredis.Redis, keys: Keys, db: Database, ids: list[str], everything: bool, confirm: str
) -> int:
    """Delete dead letters for good; their tasks, parked while they waited for a replay, are
    FAILED (reason dead-lettered) so that none stays QUEUED forever."""
    if confirm != "purge":
        raise InvalidArgumentError(
            'set confirm to "purge" to delete dead letters for good', field="confirm"
        )
    found = await _select(redis, keys, ids, everything)
    if not found:
        return 0
    task_ids = [raw.get("field:taskId", "") for _, raw in found]
    await abandon(db, [t for t in task_ids if t], "its dead letter was purged")
    return await redis.xdel(keys.dead_letters, *[i for i, _ in found])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
