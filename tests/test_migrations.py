"""The Alembic migrations build exactly the models' schema on SQLite and PostgreSQL, and reverse."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from flowq.db import Base, sync_url
from flowq.db.migrate import downgrade, upgrade


def test_migrations_match_models_and_reverse(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # running again is harmless
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        downgrade(database_url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(database_url)
        assert {"workflows", "tasks", "step_runs", "task_events", "executor_leases"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
