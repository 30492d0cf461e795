"""Run flowq service processes for end-to-end and fault tests.

`ServiceProcess` starts a command in its own session with stdout+stderr in a log file, waits
for `grpc.health.v1.Health/Check` to say SERVING over a real channel, and stops it by
SIGTERM (graceful), SIGKILL (crash) or SIGSTOP/SIGCONT (a hung process). `ProcessGroup`
owns every process a test starts and kills them all, and anything they spawned, at teardown.

Every process of a group carries `FLOWQ_TEST_PROCESS_GROUP=<token>` in its environment, so
children that escaped into their own session (shell steps) are found even after their parent
died. Inherited `FLOWQ_*` variables are dropped: a service sees only what the test passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowq.tls import TlsFiles, channel

from . import proctree

GROUP_ENV = "FLOWQ_TEST_PROCESS_GROUP"
SERVICES = ("apiserver", "dispatcher", "executor")
_TAIL = 50
# Reconnect fast while a server is still coming up (the default backoff starts at 1s).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class ServiceProcessError(AssertionError):
    """A service process did not become healthy, or did not exit when told."""


def flowq_bin(name: str) -> str:
    """Path of a console script installed next to this interpreter (`flowq-executor`, ...)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ServiceProcessError(
            f"{path} does not exist: install the project into this venv (`make install`)"
        )
    return str(path)


def service_command(role: str) -> list[str]:
    """The command line of one flowq service: `apiserver`, `dispatcher` or `executor`."""
    if role not in SERVICES:
        raise ValueError(f"unknown service {role!r}; one of {', '.join(SERVICES)}")
    return [flowq_bin(f"flowq-{role}")]


class ServiceProcess:
    """One started process (started by the constructor)."""

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, object] | None = None,
        name: str = "",
        *,
        log_dir: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cmd = [str(part) for part in cmd]
        self.name = name or Path(self.cmd[0]).name
        self.env = {key: str(value) for key, value in (env or {}).items()}
        directory = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp("-flowq-proc"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = _unique_path(directory, self.name)

        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(self.env)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.cmd,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) after."""
        return self._proc.poll()

    def running(self) -> bool:
        return self._proc.poll() is None

    # -- waiting ----------------------------------------------------------------------

    def wait_healthy(
        self, target: str, service: str = "", timeout: float = 30.0, tls: TlsFiles | None = None
    ) -> None:
        """Poll Health/Check on `target` until `service` is SERVING.

        Raises ServiceProcessError, with the last log lines, on timeout or if the process exits.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        request = health_pb2.HealthCheckRequest(service=service)
        with channel(target, tls or TlsFiles(), _CHANNEL_OPTIONS) as chan:
            stub = health_pb2_grpc.HealthStub(chan)
            while True:
                if not self.running():
                    raise self._error(f"exited with {self.returncode} before it was healthy")
                remaining = deadline - time.monotonic()
                try:
                    reply = stub.Check(request, timeout=max(0.1, min(1.0, remaining)))
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
                if time.monotonic() >= deadline:
                    raise self._error(
                        f"not SERVING on {target} (health service {service!r}) within "
                        f"{timeout:g}s; last answer: {last}"
                    )
                time.sleep(0.1)

    def wait_http_ok(self, url: str, timeout: float = 30.0) -> None:
        """Poll GET `url` until it answers 2xx (e.g. the apiserver's `/readyz`)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not self.running():
                raise self._error(f"exited with {self.returncode} before {url} answered")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if 200 <= reply.status < 300:
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise self._error(f"{url} not 2xx within {timeout:g}s; last answer: {last}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end on its own; its exit code."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._error(f"still running after {timeout:g}s") from None

    # -- signals ----------------------------------------------------------------------

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful stop); SIGKILL if still running after `timeout`. The exit code."""
        if self.running():
            self.resume()  # a stopped process cannot handle SIGTERM
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.wait()

    def kill(self) -> int:
        """SIGKILL the process and everything it started (a crashed pod). The exit code."""
        if not self.running():
            return self._proc.wait()
        tree = proctree.kill_tree(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self._proc.wait()
        proctree.wait_gone(tree, 10.0)
        return code

    def pause(self) -> None:
        """SIGSTOP its process group: alive but answering nothing (a hung process)."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    # -- logs -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _TAIL) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _error(self, what: str) -> ServiceProcessError:
        return ServiceProcessError(
            f"{self.name} (pid {self.pid}) {what}\n"
            f"--- last {_TAIL} lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.returncode}"
        return f"ServiceProcess({self.name!r}, pid={self.pid}, {state})"


class ProcessGroup:
    """Every process a test starts; `close()` kills them all and whatever they spawned."""

    def __init__(self, log_dir: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp("-flowq"))
        self.token = uuid.uuid4().hex
        self.processes: list[ServiceProcess] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def marker(self) -> str:
        return f"{GROUP_ENV}={self.token}"

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, object] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ServiceProcess:
        if self._closed:
            raise ServiceProcessError("this ProcessGroup is closed")
        full_env = {**(env or {}), GROUP_ENV: self.token}
        proc = ServiceProcess(cmd, full_env, name, log_dir=self.log_dir, cwd=cwd)
        self.processes.append(proc)
        return proc

    def start_service(
        self, role: str, env: Mapping[str, object], name: str | None = None
    ) -> ServiceProcess:
        """Start `flowq-<role>` (apiserver, dispatcher, executor) with `env` (FLOWQ_* vars)."""
        return self.start(name or role, service_command(role), env)

    def logs(self, lines: int = _TAIL) -> str:
        """The last lines of every process's log, for a failure report."""
        parts = [
            f"--- {p.name} (pid {p.pid}, {'running' if p.running() else f'exit {p.returncode}'}) "
            f"{p.log_path} ---\n{p.log_tail(lines)}"
            for p in self.processes
        ]
        return "\n".join(parts)

    def close(self) -> list[int]:
        """Kill every process and every stray that carries this group's marker.

        Returns the pids still alive afterwards (should be empty). Idempotent.
        """
        if self._closed:
            return []
        self._closed = True
        for proc in reversed(self.processes):
            proc.resume()
            proc.kill()
        strays = proctree.pids_with_env(self.marker)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a stray that leads its own group
        proctree.kill_pids(strays)
        return proctree.wait_gone(strays, 10.0)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _unique_path(directory: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "process"
    path = directory / f"{safe}.log"
    n = 2
    while path.exists():
        path = directory / f"{safe}-{n}.log"
        n += 1
    return path
