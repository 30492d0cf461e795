"""Small TCP helpers for local servers: pick a free port, see whether something listens."""

from __future__ import annotations

import socket
import time

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
