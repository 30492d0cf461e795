"""The async engine and session factory, configured per backend."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

# SQLite lets writers wait this long for a lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 15000
CONNECT_TIMEOUT_SECONDS = 5
# PostgreSQL: no statement runs (or waits for a lock) longer than this, and no session sits
# idle inside a transaction longer than that; nothing waits forever.
STATEMENT_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


def update(entity: Any) -> sqlalchemy.Update:
    """UPDATE for compare-and-set writes, without the ORM re-evaluating the WHERE clause in
    Python against loaded objects (a large cost on the hot path; callers re-read what they need)."""
    return sqlalchemy.update(entity).execution_options(synchronize_session=False)


def _driver(url: str, sqlite_driver: str) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(
            drivername=f"sqlite+{sqlite_driver}" if sqlite_driver else "sqlite"
        ).render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def async_url(url: str) -> str:
    """FLOWQ_DATABASE_URL with its async driver: aiosqlite or psycopg."""
    return _driver(url, "aiosqlite")


def sync_url(url: str) -> str:
    """FLOWQ_DATABASE_URL with its sync driver, for migrations."""
    return _driver(url, "")


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite file (the default lives in .flowq/)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite(sync_engine: Any) -> None:
    """WAL, a busy timeout and foreign keys on every SQLite connection (several processes share the file)."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class Database:
    """An async engine plus session factory; open sessions at the edge (per RPC, per step)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        ensure_sqlite_dir(url)
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size // 2,
                pool_timeout=10,
                connect_args={
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
                },
            )
        self.engine = create_async_engine(async_url(url), **kwargs)
        if self.is_sqlite:
            configure_sqlite(self.engine.sync_engine)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    async def ping(self, timeout: float = 3.0) -> None:
        """Raise if the database does not answer `SELECT 1` within `timeout` seconds."""
        async with asyncio.timeout(timeout), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
