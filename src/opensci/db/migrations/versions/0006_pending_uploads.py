"""storage: bytes of chunks uploaded that no file holds yet count against the owner's quota

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 09:30:00
"""

import sqlalchemy as sa
from alembic import op

import opensci.db.base

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_pending",
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["owners.id"], name=op.f("fk_storage_pending_owner_id_owners"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_storage_pending")),
    )


def downgrade() -> None:
    op.drop_table("storage_pending")
