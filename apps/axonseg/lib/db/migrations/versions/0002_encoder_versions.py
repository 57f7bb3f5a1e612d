"""encoder versions: self-supervised pretrained encoders, and the training run that made each

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "encoder_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("structure", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("structure", "checksum"),
    )
    with op.batch_alter_table("encoder_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_encoder_versions_structure"), ["structure"], unique=False)
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("encoder_version_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_training_runs_encoder_version_id", "encoder_versions", ["encoder_version_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_training_runs_encoder_version_id", type_="foreignkey")
        batch_op.drop_column("encoder_version_id")
    with op.batch_alter_table("encoder_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_encoder_versions_structure"))
    op.drop_table("encoder_versions")
