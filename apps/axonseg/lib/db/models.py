"""The axonseg database schema (SQLAlchemy 2 ORM). Change it only together with a migration in ``migrations/``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    """A volume in the datastore, described when it is added (no voxels are stored here)."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    original_path: Mapped[str] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(32))
    shape: Mapped[list[Any] | None]
    voxel_size_um: Mapped[list[Any] | None]
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """One set of weights a model has served; exactly one per model is active."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model", "checksum"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    checksum: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # "shipped" or "trained"
    metrics: Mapped[dict[str, Any] | None]
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EncoderVersion(Base):
    """A self-supervised pretrained U-Net encoder (``ssl_pretrain``), for fine-tuning one structure."""

    __tablename__ = "encoder_versions"
    __table_args__ = (UniqueConstraint("structure", "checksum"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    structure: Mapped[str] = mapped_column(String(64), index=True)  # the model whose U-Net it fits
    modality: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))  # the pretext task, e.g. "slice_permutation"
    checksum: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None]  # the pretext task's last score, e.g. {"accuracy": 0.9}
    params: Mapped[dict[str, Any] | None]  # the run's parameters and the volumes it read
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelVersion(Base):
    """Every label save is kept; the highest version of an (image, tag) is the one served by default."""

    __tablename__ = "label_versions"
    __table_args__ = (UniqueConstraint("image_id", "tag", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str | None] = mapped_column(String(255))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    info: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(Base):
    """An annotator's claim on an image; the primary key makes two live claims impossible."""

    __tablename__ = "leases"
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Score(Base):
    """An active-learning score of one image under one model version."""

    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("image_id", "method", "model_version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """A training job: its parameters, per-epoch metrics and the model version it published."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any] | None]
    epochs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    encoder_version_id: Mapped[int | None] = mapped_column(ForeignKey("encoder_versions.id"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
