"""Task clean_pending: an ended task whose unfinished steps left objects for an executor to clean.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("clean_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_index("ix_tasks_clean_pending", ["clean_pending"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_clean_pending")
        batch.drop_column("clean_pending")
