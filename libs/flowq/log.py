"""JSON log lines from the standard logging module.

Task id, step and stream entry id travel as context variables and are added to every line
logged while they are set (`with log_context(task_id=...)`), so call sites stay short.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "flowq_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: str | int | None) -> Iterator[None]:
    """Add fields (task_id, step, entry_id, ...) to every line logged inside the block."""
    merged = {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str, instance_id: str) -> None:
        super().__init__()
        self.service = service
        self.instance_id = instance_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.instance_id = self.instance_id
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure_logging(service: str, instance_id: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr: time, level, logger, message, service, instance and context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    )
    handler.addFilter(_ContextFilter(service, instance_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that are chatty at INFO.
    for name in (
        "grpc",
        "uvicorn.error",
        "uvicorn.access",
        "kubernetes",
        "urllib3",
        "aiosqlite",
        "httpx",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
