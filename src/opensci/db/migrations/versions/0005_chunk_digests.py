"""storage: chunks are named by their digest (BLAKE3 for new chunks, sha256 for those stored before)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:00:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Both SQLite (3.25 and later) and PostgreSQL rename in place, keeping the primary key.
    op.execute("ALTER TABLE storage_chunks RENAME COLUMN sha256 TO digest")


def downgrade() -> None:
    op.execute("ALTER TABLE storage_chunks RENAME COLUMN digest TO sha256")
