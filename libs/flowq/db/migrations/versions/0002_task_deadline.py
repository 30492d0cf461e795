"""Task deadline: created_at + the workflow's timeoutSeconds, for the timeout sweep.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from flowq.db.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("deadline_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_tasks_deadline_at", ["deadline_at"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_deadline_at")
        batch.drop_column("deadline_at")
