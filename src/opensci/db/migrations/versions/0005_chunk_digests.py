"""storage: chunks are named by their digest (BLAKE3 for new chunks); those named by sha256 before are legacy

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Both SQLite (3.25 and later) and PostgreSQL rename in place, keeping the primary key.
    op.execute("ALTER TABLE storage_chunks RENAME COLUMN sha256 TO digest")
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("legacy", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Every chunk stored so far is named by its sha256: no upload may name it any more (see the model).
    op.execute(sa.text("UPDATE storage_chunks SET legacy = :yes").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.drop_column("legacy")
    op.execute("ALTER TABLE storage_chunks RENAME COLUMN digest TO sha256")
