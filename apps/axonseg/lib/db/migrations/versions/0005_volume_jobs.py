"""volume jobs: whole-volume segmentation as blocks, each block's state and checksum

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volume_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("image_id", sa.String(255), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_volume_jobs_image_id", "volume_jobs", ["image_id"])
    op.create_index("ix_volume_jobs_model", "volume_jobs", ["model"])
    op.create_table(
        "volume_blocks",
        sa.Column("job_id", sa.String(64), sa.ForeignKey("volume_jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.String(16), primary_key=True),
        sa.Column("index", sa.Integer(), primary_key=True),
        sa.Column("voxels", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("volume_blocks")
    op.drop_index("ix_volume_jobs_model", "volume_jobs")
    op.drop_index("ix_volume_jobs_image_id", "volume_jobs")
    op.drop_table("volume_jobs")
