"""Find and kill process trees through /proc (Linux), so no test leaves a process behind.

A service may start children in their own process group or session (the executor runs shell
steps that way, PostgreSQL backends call setsid), so killing one process group is not enough:
these helpers walk parent links, and can find strays by an environment marker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first, then theirs), by parent links."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(other)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt: list[int] = []
        for parent in frontier:
            for child in children.get(parent, []):
                if child not in found:
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def pids_with_env(marker: str) -> list[int]:
    """Live processes whose environment holds the `NAME=value` string `marker`."""
    needle = marker.encode()
    found: list[int] = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            env = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int], sig: signal.Signals = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Send `sig` to `pid` and all its descendants (found before signalling). Returns them all."""
    tree = [pid, *descendants(pid)]
    kill_pids(tree, sig)
    return tree


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive at the deadline."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = [pid for pid in pending if alive(pid)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.02)
