"""Alembic, driven from code: `flowq db upgrade` and the local stack call `upgrade()`."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from flowq.db.engine import ensure_sqlite_dir, sync_url


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "flowq.db:migrations")
    config.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`; safe to run again."""
    ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
