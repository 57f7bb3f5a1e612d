"""The axonseg database schema (SQLAlchemy 2 ORM). Change it only together with a migration in ``migrations/``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    """A volume: where its voxels are (the chunked store, or a registered Zarr/N5 read in place) and what
    the server knows of it. Geometry fields are the server's; ``info`` is client metadata only."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    original_path: Mapped[str] = mapped_column(Text)  # where it came from (upload name or file found)
    format: Mapped[str | None] = mapped_column(String(32))
    shape: Mapped[list[Any] | None]
    voxel_size_um: Mapped[list[Any] | None]  # None: the file did not say
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modality: Mapped[str | None] = mapped_column(String(32))  # "light-sheet" or "em"
    structures: Mapped[list[Any] | None]  # the models whose labels this image may carry
    dtype: Mapped[str | None] = mapped_column(String(16))
    chunks: Mapped[list[Any] | None]
    storage_uri: Mapped[str | None] = mapped_column(Text)  # the OME-Zarr group or registered container
    dataset: Mapped[str | None] = mapped_column(Text)  # the full-resolution array inside storage_uri
    registered: Mapped[bool] = mapped_column(Boolean, default=False)  # read in place, read-only
    levels: Mapped[list[Any] | None]  # pyramid level shapes
    intensity: Mapped[dict[str, Any] | None]  # statistics from ingest; every normalisation uses them
    origin_um: Mapped[list[Any] | None]  # (z, y, x) physical position of voxel 0
    direction: Mapped[list[Any] | None]  # ITK direction cosines (x, y, z rows); None = identity
    info: Mapped[dict[str, Any] | None]  # client metadata (PUT /datastore/image/info), never geometry
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # who uploaded it (upload quotas)
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the size of the uploaded file


class Region(Base):
    """What annotators are handed: a box of an image (the whole image when it is small).

    Its id is what MONAI Label calls an image id: leases, scores and label versions refer to it.
    """

    __tablename__ = "regions"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    offset: Mapped[list[Any]]
    shape: Mapped[list[Any]]
    whole: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer, default=0)  # z, y, x order within the image
    info: Mapped[dict[str, Any] | None]  # client metadata (e.g. which strategy handed it out)


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
    """Every label save of a region for one structure and tag; the highest version is the one in the label
    array and served by default. Rows from before regions existed have ``region_id`` None (legacy)."""

    __tablename__ = "label_versions"
    __table_args__ = (UniqueConstraint("image_id", "region_id", "structure", "tag", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    region_id: Mapped[str | None] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    structure: Mapped[str | None] = mapped_column(String(64), index=True)
    tag: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str | None] = mapped_column(String(255))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    info: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(Base):
    """An annotator's claim on a region; the primary key makes two live claims impossible."""

    __tablename__ = "leases"
    image_id: Mapped[str] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Score(Base):
    """An active-learning score of one region under one model version."""

    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("image_id", "method", "model_version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    value: Mapped[float] = mapped_column(Float)
    # The region's pooled encoder features under that version, for diversity-aware sampling (or None).
    features: Mapped[list[Any] | None] = mapped_column(JSON)
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
    # A fine-tuning run's publish gate: held-out and original-test scores of candidate and served weights.
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    encoder_version_id: Mapped[int | None] = mapped_column(ForeignKey("encoder_versions.id"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VolumeJob(Base):
    """A whole-volume segmentation: its plan and post-processing, where it writes, and which step it is at.

    ``key`` identifies what is computed (image, model weights, parameters, ROI): submitting the same again
    resumes this job instead of starting over."""

    __tablename__ = "volume_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # post-processing and infer options, resolved
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)  # lib.volumes.blocks.plan.BlockPlan
    folder: Mapped[str] = mapped_column(Text)  # lib.volumes.outputs.VolumeOutput
    step: Mapped[str] = mapped_column(String(16))  # predict, stitch, relabel, pyramid, done
    status: Mapped[str] = mapped_column(String(16))  # RUNNING, DONE, FAILED, CANCELLED
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # objects found, pyramid levels
    owner: Mapped[str | None] = mapped_column(String(64))  # who submitted it (may cancel it)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resumed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # progress rate from here
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VolumeBlock(Base):
    """One unit of a volume job's step (a write block, or the whole of a one-off step), and what it wrote."""

    __tablename__ = "volume_blocks"
    job_id: Mapped[str] = mapped_column(ForeignKey("volume_jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[str] = mapped_column(String(16), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    voxels: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")  # PENDING, RUNNING, DONE, FAILED
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    checksum: Mapped[str | None] = mapped_column(String(64))  # sha256 of the arrays it wrote
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class User(Base):
    """A built-in account (``lib.auth``): its role and an argon2 hash of its password, never the password."""

    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # annotator, trainer or admin (lib.auth.identity.ROLES)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Tokens issued before this are refused (a new password or role ends old sessions).
    tokens_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
