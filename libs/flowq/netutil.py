"""Small TCP helpers for local servers: pick a free port, see whether something listens."""

from __future__ import annotations

import random
import socket
import time

LOCALHOST = "127.0.0.1"

# Ports this process has handed out already: a server given one may not have bound it yet,
# so handing it out again would make two servers race for it.
_handed_out: set[int] = set()
_confined: tuple[int, int] | None = None


def confine_ports(low: int, high: int) -> None:
    """Hand out ports only from [low, high) in this process.

    Several processes that start servers side by side (pytest-xdist workers) each take their
    own slice, so a port one of them has picked but not yet bound is never picked by another.
    """
    global _confined
    if not 0 < low < high <= 65536:
        raise ValueError(f"port range [{low}, {high}) is not a range of TCP ports")
    _confined = (low, high)


def worker_port_slice(index: int, count: int) -> tuple[int, int]:
    """The `index`-th of `count` equal slices of the ports below the kernel's ephemeral range."""
    low, high = 10000, max(10000 + count * 100, _ephemeral_range()[0])
    size = (high - low) // count
    return low + index * size, low + (index + 1) * size


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """`count` different free ports (each stays bound until all are chosen, so none repeats)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("0.0.0.0" if host == LOCALHOST else host, free_port(host)))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for sock in held:
            sock.close()


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that nothing uses right now, chosen below the kernel's ephemeral range.

    A port the kernel hands out for port 0 comes from the range it also uses for outgoing
    connections, so between picking it and a server binding it a client socket may take it.
    Ports below that range are only ever taken by someone binding them on purpose. A process
    never gets the same port twice, and stays in the slice `confine_ports` gave it.
    """
    low, high = _confined or (10000, max(10001, _ephemeral_range()[0]))
    candidates = [p for p in range(low, high) if p not in _handed_out]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0" if host == LOCALHOST else host, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # fall back to the kernel
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


def port_listening(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(port: int, host: str = LOCALHOST, timeout: float = 10.0) -> bool:
    """Wait until nothing accepts connections on host:port; False if still open at the deadline."""
    deadline = time.monotonic() + timeout
    while port_listening(port, host):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
