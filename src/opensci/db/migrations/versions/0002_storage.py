"""storage: the blob store's packs, chunk index and object manifests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 23:32:47.925030
"""

import sqlalchemy as sa
from alembic import op

import opensci.db.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_objects",
        sa.Column("oid", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("touched_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("oid", name=op.f("pk_storage_objects")),
    )
    op.create_table(
        "storage_packs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("live_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sealed", sa.Boolean(), nullable=False),
        sa.Column("created_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_packs")),
    )
    op.create_table(
        "storage_chunks",
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("pack_id", sa.String(length=32), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("damaged", sa.Boolean(), nullable=False),
        sa.Column("created_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("touched_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pack_id"],
            ["storage_packs.id"],
            name=op.f("fk_storage_chunks_pack_id_storage_packs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_storage_chunks")),
    )
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_chunks_pack_id"), ["pack_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_storage_chunks_pack_id"))

    op.drop_table("storage_chunks")
    op.drop_table("storage_packs")
    op.drop_table("storage_objects")
