"""Small helpers the end-to-end tests share: waiting on a condition, and workflows whose
steps leave a ledger of side effects (to count how many times each really ran)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .stack import Stack

T = TypeVar("T")


def eventually(
    check: Callable[[], T], timeout: float = 30, what: str = "condition", poll: float = 0.1
) -> T:
    """Call `check` every `poll` s until it returns something true (returned), or fail after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def ledger_workflow(stack: Stack, ledger: Path, name: str = "count", before: str = "") -> None:
    """demo/<name>: one shell step that runs `before` then appends its task id to `ledger`."""
    command = f"{before}echo $FLOWQ_TASK_ID >> {ledger}"
    stack.put_workflow(
        name, {"steps": [{"name": "count", "type": "shell", "properties": {"command": command}}]}
    )
