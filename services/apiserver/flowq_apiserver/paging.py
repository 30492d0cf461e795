"""Opaque page tokens: the last key of the previous page, so pages stay stable under inserts."""

from __future__ import annotations

import base64
import binascii

from flowq.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgumentError("page_size must not be negative", field="page_size")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(last_key: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_key}".encode()).decode()


def decode(token: str) -> str | None:
    """The key after which the page starts; None for the first page."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith("v1:"):
        raise InvalidArgumentError(
            "page_token is not valid: pass next_page_token from a previous response",
            field="page_token",
        )
    return text[3:]
