"""compute: jobs and the repositories they read and write

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 03:02:42.389910
"""

import sqlalchemy as sa
from alembic import op

import opensci.db.base

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compute_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("submitter_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("resolved", sa.JSON(), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("time_limit", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("rerun_of", sa.Integer(), nullable=True),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("output_commit", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("host", sa.String(length=128), nullable=True),
        sa.Column("handle", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", opensci.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", opensci.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", opensci.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", opensci.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["rerun_of"],
            ["compute_jobs.id"],
            name=op.f("fk_compute_jobs_rerun_of_compute_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["submitter_id"],
            ["owners.id"],
            name=op.f("fk_compute_jobs_submitter_id_owners"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compute_jobs")),
    )
    with op.batch_alter_table("compute_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_compute_jobs_status_priority", ["status", "priority", "id"], unique=False)
        batch_op.create_index("ix_compute_jobs_submitter_status", ["submitter_id", "status"], unique=False)

    op.create_table(
        "compute_job_repos",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.String(length=32), nullable=True),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["compute_jobs.id"],
            name=op.f("fk_compute_job_repos_job_id_compute_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
            name=op.f("fk_compute_job_repos_repo_id_repositories"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compute_job_repos")),
    )
    with op.batch_alter_table("compute_job_repos", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_compute_job_repos_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_compute_job_repos_repo_id"), ["repo_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("compute_job_repos", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compute_job_repos_repo_id"))
        batch_op.drop_index(batch_op.f("ix_compute_job_repos_job_id"))

    op.drop_table("compute_job_repos")
    with op.batch_alter_table("compute_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_compute_jobs_submitter_status")
        batch_op.drop_index("ix_compute_jobs_status_priority")

    op.drop_table("compute_jobs")
