"""chunked volumes: images gain storage, modality, structures and intensity statistics; regions become rows;
label versions belong to a region and a structure; leases and scores refer to regions

Leases (short-lived claims) and scores (recomputed per model version) are dropped with their tables,
which now refer to regions. Existing label versions are kept as legacy rows (``region_id`` and
``structure`` NULL); the datastore's first start re-ingests the old images and imports their latest
final labels (``lib.volumes.upgrade``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LABEL_COLUMNS = (
    "id", "image_id", "tag", "version", "path", "checksum", "client_id", "model_version_id", "info", "created_at",
)  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("modality", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("structures", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("dtype", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("chunks", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("storage_uri", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("dataset", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("registered", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("levels", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("intensity", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("origin_um", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("direction", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("info", sa.JSON(), nullable=True))

    op.create_table(
        "regions",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("offset", sa.JSON(), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("whole", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_regions_image_id"), ["image_id"], unique=False)

    # Leases and scores now refer to regions.
    op.drop_table("leases")
    op.create_table(
        "leases",
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["regions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id"),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_leases_expires_at"), ["expires_at"], unique=False)
    op.drop_table("scores")
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["regions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "method", "model_version_id"),
    )
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scores_image_id"), ["image_id"], unique=False)

    # Label versions: a new table with region and structure, the old rows copied over as legacy rows.
    op.create_table(
        "label_versions_new",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("region_id", sa.String(length=255), nullable=True),
        sa.Column("structure", sa.String(length=64), nullable=True),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["region_id"], ["regions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "region_id", "structure", "tag", "version"),
    )
    columns = ", ".join(_LABEL_COLUMNS)
    op.execute(f"INSERT INTO label_versions_new ({columns}) SELECT {columns} FROM label_versions")
    op.drop_table("label_versions")
    op.rename_table("label_versions_new", "label_versions")
    if op.get_bind().dialect.name == "postgresql":  # copied ids did not advance the id sequence
        op.execute(
            "SELECT setval(pg_get_serial_sequence('label_versions', 'id'), COALESCE(MAX(id), 0) + 1, false) "
            "FROM label_versions"
        )
    with op.batch_alter_table("label_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_label_versions_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_label_versions_region_id"), ["region_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_label_versions_structure"), ["structure"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("0003 changes what label versions and leases refer to; restore a backup instead")
