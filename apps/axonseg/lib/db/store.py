"""Everything the app records in SQL, as plain methods over short transactions.

One ``Database`` per process (API server, each worker). Rows are returned detached
(``expire_on_commit=False``) so callers can read them after the session closes. Each concern has its own
module (images, labels, users); this one holds scores, model and encoder versions, training runs and
volume jobs, and puts them together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .images import ImageRecords
from .labels import LabelRecords
from .models import EncoderVersion, ModelVersion, Score, TrainingRun, VolumeBlock, VolumeJob, utcnow
from .transactions import rows_changed
from .users import UserRecords

_UNFINISHED_RUN = ("SUBMITTED", "RUNNING")  # a training run's states before it ends; every other one is final


def file_checksum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Database(ImageRecords, LabelRecords, UserRecords):
    """The one index: images and regions, label versions, users and leases (from their modules), and below."""

    # scores ---------------------------------------------------------------------------------
    def record_score(
        self,
        image_id: str,
        method: str,
        value: float,
        model_version_id: int | None,
        features: list[float] | None = None,
    ) -> None:
        with self.session() as s, s.begin():
            row = s.scalar(
                select(Score).where(
                    Score.image_id == image_id, Score.method == method, Score.model_version_id == model_version_id
                )
            )
            if row is None:
                row = Score(image_id=image_id, method=method, model_version_id=model_version_id)
                s.add(row)
            row.value, row.features, row.created_at = float(value), features, utcnow()

    def score_features(self, method: str, model_version_id: int | None = None) -> dict[str, list[float]]:
        """``{region: encoder features}`` stored with ``method``'s scores under a model version."""
        with self.session() as s:
            rows = s.execute(
                select(Score.image_id, Score.features).where(
                    Score.method == method, Score.model_version_id == model_version_id
                )
            ).all()
        return {image: features for image, features in rows if features}  # JSON null or SQL NULL: none

    def scores(self, method: str, model_version_id: int | None = None) -> dict[str, float]:
        with self.session() as s:
            rows = s.execute(
                select(Score.image_id, Score.value).where(
                    Score.method == method, Score.model_version_id == model_version_id
                )
            ).all()
        return dict(rows)

    # model versions -------------------------------------------------------------------------
    def register_model_version(
        self, model: str, path: str, source: str, metrics: dict[str, Any] | None = None, activate: bool = True
    ) -> ModelVersion:
        """Record the weights at ``path`` (by checksum, once) and optionally make them the active version."""
        checksum = file_checksum(path)
        with self.session() as s, s.begin():
            row = s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.checksum == checksum))
            if row is None:
                row = ModelVersion(model=model, checksum=checksum, path=path, source=source, metrics=metrics)
                s.add(row)
                s.flush()
            if activate:
                s.execute(update(ModelVersion).where(ModelVersion.model == model).values(active=False))
                row.active = True
        return row

    def active_model_version(self, model: str) -> ModelVersion | None:
        with self.session() as s:
            return s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.active.is_(True)))

    def model_version_of_file(self, model: str, path: str) -> ModelVersion | None:
        """The version whose weights are the file at ``path`` now (by checksum)."""
        checksum = file_checksum(path)
        with self.session() as s:
            return s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.checksum == checksum))

    def add_model_version_metrics(self, version_id: int, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into a version's (e.g. a score measured once and kept for the next run)."""
        with self.session() as s, s.begin():
            row = s.get(ModelVersion, version_id)
            if row is not None:
                row.metrics = {**(row.metrics or {}), **metrics}

    def model_versions(self, model: str) -> list[ModelVersion]:
        with self.session() as s:
            return list(s.scalars(select(ModelVersion).where(ModelVersion.model == model).order_by(ModelVersion.id)))

    # pretrained encoders --------------------------------------------------------------------
    def register_encoder_version(
        self,
        structure: str,
        modality: str,
        task: str,
        path: str,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> EncoderVersion:
        """Record the encoder file at ``path`` (once per structure and checksum)."""
        checksum = file_checksum(path)
        with self.session() as s, s.begin():
            row = s.scalar(
                select(EncoderVersion).where(EncoderVersion.structure == structure, EncoderVersion.checksum == checksum)
            )
            if row is None:
                row = EncoderVersion(
                    structure=structure,
                    modality=modality,
                    task=task,
                    checksum=checksum,
                    path=path,
                    metrics=metrics,
                    params=params,
                )
                s.add(row)
        return row

    def encoder_version(self, version_id: int) -> EncoderVersion | None:
        with self.session() as s:
            return s.get(EncoderVersion, version_id)

    def encoder_versions(self, structure: str | None = None) -> list[EncoderVersion]:
        with self.session() as s:
            query = select(EncoderVersion).order_by(EncoderVersion.id)
            if structure is not None:
                query = query.where(EncoderVersion.structure == structure)
            return list(s.scalars(query))

    # training runs --------------------------------------------------------------------------
    def add_training_run(self, job_id: str, model: str, params: dict[str, Any], status: str = "SUBMITTED") -> None:
        try:
            with self.session() as s, s.begin():
                s.add(TrainingRun(job_id=job_id, model=model, params=params, status=status, epochs=[]))
        except IntegrityError:  # recorded already: its worker may start it before the API records it
            if self.training_run(job_id) is None:
                raise

    def update_training_run(self, job_id: str, **values: Any) -> bool:
        """Update a run that has not ended (False if it has): its final state is written once, never overwritten."""
        unfinished = (TrainingRun.job_id == job_id) & TrainingRun.status.in_(_UNFINISHED_RUN)
        with self.session() as s, s.begin():
            return rows_changed(s.execute(update(TrainingRun).where(unfinished).values(**values))) == 1

    def add_training_epoch(self, job_id: str, epoch: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            run = s.scalar(select(TrainingRun).where(TrainingRun.job_id == job_id).with_for_update())
            if run is not None:
                run.epochs = [*run.epochs, epoch]  # reassign: JSON columns do not track in-place changes
                run.status = "RUNNING" if run.status in _UNFINISHED_RUN else run.status

    def training_run(self, job_id: str) -> TrainingRun | None:
        with self.session() as s:
            return s.scalar(select(TrainingRun).where(TrainingRun.job_id == job_id))

    def training_runs(
        self, model: str | None = None, statuses: Iterable[str] | None = None, limit: int | None = None
    ) -> list[TrainingRun]:
        """Newest first, at most ``limit``."""
        with self.session() as s:
            query = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
            if model is not None:
                query = query.where(TrainingRun.model == model)
            if statuses is not None:
                query = query.where(TrainingRun.status.in_(list(statuses)))
            return list(s.scalars(query))

    # volume jobs ----------------------------------------------------------------------------
    def add_volume_job(self, job: VolumeJob, blocks: Iterable[VolumeBlock]) -> tuple[VolumeJob, bool]:
        """Record a job with its blocks; if a job with its key exists (a resubmission), that one, unchanged.
        Returns ``(job, created)``."""
        try:
            with self.session() as s, s.begin():
                s.add(job)
                s.flush()
                s.add_all(blocks)
            return job, True
        except IntegrityError:
            existing = self.volume_job_by_key(job.key)
            if existing is None:
                raise
            return existing, False

    def volume_job(self, job_id: str) -> VolumeJob | None:
        with self.session() as s:
            return s.get(VolumeJob, job_id)

    def volume_job_by_key(self, key: str) -> VolumeJob | None:
        with self.session() as s:
            return s.scalar(select(VolumeJob).where(VolumeJob.key == key))

    def volume_jobs(
        self, image_id: str | None = None, model: str | None = None, status: str | None = None
    ) -> list[VolumeJob]:
        """Newest first."""
        with self.session() as s:
            query = select(VolumeJob).order_by(VolumeJob.created_at.desc())
            for column, value in ((VolumeJob.image_id, image_id), (VolumeJob.model, model), (VolumeJob.status, status)):
                if value is not None:
                    query = query.where(column == value)
            return list(s.scalars(query))

    def update_volume_job(self, job_id: str, **values: Any) -> None:
        with self.session() as s, s.begin():
            s.execute(update(VolumeJob).where(VolumeJob.id == job_id).values(**values))

    def volume_blocks(self, job_id: str, step: str | None = None) -> list[VolumeBlock]:
        with self.session() as s:
            query = select(VolumeBlock).where(VolumeBlock.job_id == job_id).order_by(VolumeBlock.index)
            if step is not None:
                query = query.where(VolumeBlock.step == step)
            return list(s.scalars(query))
