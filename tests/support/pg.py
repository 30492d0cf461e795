"""A private PostgreSQL for tests, and throw-away databases on any server.

`LocalPostgres` runs initdb into a temporary directory and starts `postgres` itself (not
through pg_ctl, so the test owns the postmaster's pid) on a free 127.0.0.1 port: trust auth,
no Unix socket, fsync off. PostgreSQL refuses to run as root; when the tests run as root the
server runs as the `postgres` user if it exists, else as `nobody` (subprocess `user=`/`group=`),
in a directory under /tmp that user owns.

Database URLs are SQLAlchemy-style (`postgresql://user@host:port/db`, a `+driver` part is
kept); psycopg gets them with the driver part removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from flowq.netutil import LOCALHOST, free_port
from tests.support import proctree

SUPERUSER = "postgres"
_INSTALL_HINT = (
    "install PostgreSQL (`apt-get install postgresql`; its binaries live in "
    "/usr/lib/postgresql/<version>/bin) or run a server on 127.0.0.1:5432"
)


class LocalPostgresError(RuntimeError):
    """A private PostgreSQL could not be started."""


class PostgresNotFoundError(LocalPostgresError):
    """No initdb/postgres binaries on this machine."""


# -- URLs and probes ----------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """`postgresql+psycopg://...` → `postgresql://...` (what psycopg accepts)."""
    return re.sub(r"^postgres(?:ql)?(\+[^:]*)?://", "postgresql://", url)


def with_database(url: str, dbname: str) -> str:
    """The same URL pointing at database `dbname`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def postgres_answers(url: str, timeout: float = 2.0) -> bool:
    """True when a connection to `url` runs `SELECT 1`."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=max(1, round(timeout))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def can_create_databases(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers and its role may CREATE DATABASE."""
    query = "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=max(1, round(timeout))) as conn:
            row = conn.execute(query).fetchone()
        return bool(row and row[0])
    except psycopg.Error:
        return False


def create_database(admin_url: str, prefix: str = "flowq_test") -> str:
    """Create a fresh, uniquely named database on the server of `admin_url`; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def drop_database(admin_url: str, database: str) -> None:
    """Drop `database` (a name or a URL) if it exists, closing its open connections."""
    name = database_name(database) if "://" in database else database
    ident = sql.Identifier(name)
    with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=5) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        except psycopg.errors.SyntaxError:  # PostgreSQL < 13: no FORCE
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


# -- binaries and users -------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The directory holding initdb and postgres: from PATH, else /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        bindir = Path(on_path).resolve().parent
        if (bindir / "postgres").exists():
            return bindir
    candidates = glob.glob("/usr/lib/postgresql/*/bin") + ["/usr/local/pgsql/bin"]

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)

    for path in sorted(candidates, key=version, reverse=True):
        bindir = Path(path)
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as when we are root; None if not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LocalPostgresError(
        "running as root and neither a `postgres` nor a `nobody` user exists; PostgreSQL "
        "refuses to run as root (create one: `useradd -r postgres`)"
    )


def _world_traversable(path: Path) -> bool:
    for part in [path, *path.parents]:
        with contextlib.suppress(OSError):
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
    return True


# -- the server ---------------------------------------------------------------------------


class LocalPostgres:
    """A private PostgreSQL server on 127.0.0.1 (superuser `postgres`, trust auth)."""

    def __init__(self, *, port: int | None = None, start_timeout: float = 60.0) -> None:
        self._port = port
        self._start_timeout = start_timeout
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalPostgresError("LocalPostgres has no port until start()")
        return self._port

    @property
    def url(self) -> str:
        """Admin URL: superuser `postgres`, database `postgres`."""
        return f"postgresql://{SUPERUSER}@{LOCALHOST}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._base / "postgres.log" if self._base is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalPostgres:
        """initdb (first time only), start, and wait until it answers a query."""
        if self.running():
            return self
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresNotFoundError(f"no initdb/postgres binaries found; {_INSTALL_HINT}")
        self._user = _server_user()
        if self._base is None:
            self._base = self._make_base()
        data = self._base / "data"
        if not (data / "PG_VERSION").exists():
            self._initdb(bindir, data)
        if self._port is not None:
            self._spawn_and_wait(bindir, data, self._port)
            return self
        last: LocalPostgresError | None = None
        for _ in range(5):  # a picked port can be taken before postgres binds it
            port = free_port()
            try:
                self._spawn_and_wait(bindir, data, port)
            except LocalPostgresError as exc:
                last = exc
                continue
            self._port = port
            return self
        assert last is not None
        raise last

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL after `timeout`; remove the data. Idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            self._proc = None
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (a crash). Data is kept, so
        `start()` brings the same server back on the same port, through crash recovery."""
        if self._proc is None:
            return
        if self._proc.poll() is not None:  # already dead: its pid may belong to another now
            self._proc = None
            return
        tree = proctree.kill_tree(self._proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10.0)
        proctree.wait_gone(tree, 10.0)
        self._proc = None

    def __enter__(self) -> LocalPostgres:
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
        return f"LocalPostgres(port={self._port}, pid={self.pid}, {state})"

    # -- internals ------------------------------------------------------------------------

    def _as_server_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _make_base(self) -> Path:
        parent = Path(tempfile.gettempdir())
        if self._user is not None and not _world_traversable(parent):
            parent = Path("/tmp")
        base = Path(tempfile.mkdtemp(prefix="flowq-pg-", dir=parent))
        if self._user is not None:
            os.chown(base, self._user.pw_uid, self._user.pw_gid)
        return base

    def _initdb(self, bindir: Path, data: Path) -> None:
        assert self._base is not None and self.log_path is not None
        cmd = [
            str(bindir / "initdb"),
            "-D", str(data),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            try:
                subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._base,
                    env=self._env(),
                    timeout=120,
                    check=True,
                    **self._as_server_user(),
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                raise LocalPostgresError(f"initdb failed ({exc}):\n{self._log_tail()}") from exc

    def _spawn_and_wait(self, bindir: Path, data: Path, port: int) -> None:
        assert self._base is not None and self.log_path is not None
        cmd = [
            str(bindir / "postgres"),
            "-D", str(data),
            "-p", str(port),
            "-c", f"listen_addresses={LOCALHOST}",
            "-c", "unix_socket_directories=",
            # fsync off is safe for kill -9 (the OS keeps written pages); synchronous_commit stays
            # on, so a commit the server acknowledged survives a kill -9 as in production.
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._base,
                env=self._env(),
                start_new_session=True,
                **self._as_server_user(),
            )
        self._proc = proc
        url = f"postgresql://{SUPERUSER}@{LOCALHOST}:{port}/postgres"
        deadline = time.monotonic() + self._start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise LocalPostgresError(
                    f"postgres on port {port} exited with {proc.returncode}:\n{self._log_tail()}"
                )
            if self._answers_as(url, data):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise LocalPostgresError(
                    f"postgres on port {port} did not answer within "
                    f"{self._start_timeout:.0f}s:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    @staticmethod
    def _answers_as(url: str, data: Path) -> bool:
        """A query answered by *our* server (not another one that took the port)."""
        try:
            with psycopg.connect(url, connect_timeout=1) as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.Error:
            return False
        return row is not None and Path(row[0]).resolve() == data.resolve()

    @staticmethod
    def _env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
