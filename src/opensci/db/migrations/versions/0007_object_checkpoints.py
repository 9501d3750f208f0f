"""storage: sha256 checkpoints of each object, so a re-upload hashes only from its first change on

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storage_objects") as batch:
        batch.add_column(sa.Column("checkpoints", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("storage_objects") as batch:
        batch.drop_column("checkpoints")
