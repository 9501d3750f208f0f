"""storage: which repositories hold which blob store objects; quotas per owner; fast chunk checks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:50:00
"""

import sqlalchemy as sa
from alembic import op

import opensci.db.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check", sa.LargeBinary(length=8), nullable=True))
    op.create_table(
        "storage_repo_objects",
        sa.Column("repo_id", sa.String(length=32), nullable=False),
        sa.Column("oid", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
            name=op.f("fk_storage_repo_objects_repo_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repo_id", "oid", name=op.f("pk_storage_repo_objects")),
    )
    with op.batch_alter_table("storage_repo_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_repo_objects_oid"), ["oid"], unique=False)
    op.create_table(
        "storage_quotas",
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("limit_bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["owners.id"], name=op.f("fk_storage_quotas_owner_id_owners"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_storage_quotas")),
    )


def downgrade() -> None:
    op.drop_table("storage_quotas")
    with op.batch_alter_table("storage_repo_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_storage_repo_objects_oid"))
    op.drop_table("storage_repo_objects")
    with op.batch_alter_table("storage_chunks", schema=None) as batch_op:
        batch_op.drop_column("check")
