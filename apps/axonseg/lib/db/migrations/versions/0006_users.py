"""users: built-in accounts with roles; who uploaded each image and who submitted each volume job

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tokens_after", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("upload_bytes", sa.BigInteger(), nullable=True))
        batch.create_index("ix_images_owner", ["owner"])
    with op.batch_alter_table("volume_jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volume_jobs") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_owner")
        batch.drop_column("upload_bytes")
        batch.drop_column("owner")
    op.drop_table("users")
