"""Per-test Redis key prefixes on a shared server: tests never FLUSHALL, they delete their own."""

from __future__ import annotations

import uuid

import redis


def new_key_prefix() -> str:
    """A unique `FLOWQ_KEY_PREFIX` for one test: `flowq-test-<hex>`."""
    return f"flowq-test-{uuid.uuid4().hex[:16]}"


def delete_prefixed_keys(url: str, prefix: str) -> int:
    """Delete the key `prefix` and every key `prefix:*` on the Redis at `url`; how many."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete keys under an unsafe prefix {prefix!r}")
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        deleted = int(client.delete(prefix))
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
        return deleted
    finally:
        client.close()
