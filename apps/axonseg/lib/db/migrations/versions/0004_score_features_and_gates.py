"""score features and training gates: a score row may carry the region's encoder features (diversity-aware
sampling); a training run keeps its publish gate's figures

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("features", sa.JSON(), nullable=True))
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gate", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("gate")
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("features")
