"""Everything the app records in SQL, as plain methods over short transactions.

One ``Database`` per process (API server, each worker). Rows are returned detached
(``expire_on_commit=False``) so callers can read them after the session closes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .engine import make_engine
from .models import (
    EncoderVersion,
    Image,
    LabelVersion,
    Lease,
    ModelVersion,
    Region,
    Score,
    TrainingRun,
    User,
    VolumeBlock,
    VolumeJob,
    utcnow,
)

_VERSION_RETRIES = 50  # saves that race for the same (image, tag, version) retry with the next number
_UNFINISHED_RUN = ("SUBMITTED", "RUNNING")  # a training run's states before it ends; every other one is final


def file_checksum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lock_for_write(session: Session) -> None:
    """Make a read-modify-write transaction exclusive: PostgreSQL locks the rows read ``FOR UPDATE``; SQLite
    (whose driver starts transactions only at the first write, after the read) takes its write lock now."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


def _retry_when_locked(operation: Callable[[], Any], attempts: int = 100) -> Any:
    """Run a read-modify-write transaction again when SQLite refuses it because another process wrote
    first (PostgreSQL waits on the row lock instead)."""
    for attempt in range(attempts):
        try:
            return operation()
        except OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (1 + attempt % 5))


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        self.engine.dispose()

    # images and regions ---------------------------------------------------------------------
    def add_image(self, image: Image, regions: Iterable[Region], replace_legacy: bool = False) -> None:
        """Record an image with its regions in one transaction; KeyError if the id is taken.

        ``replace_legacy``: fill in the row of an image recorded before the chunked store (no
        ``storage_uri``), keeping its label history rows.
        """
        try:
            with self.session() as s, s.begin():
                existing = s.get(Image, image.id) if replace_legacy else None
                if existing is not None and existing.storage_uri is None:
                    image.added_at = existing.added_at
                    s.merge(image)
                else:
                    s.add(image)
                s.flush()
                s.add_all(list(regions))
        except IntegrityError:
            raise KeyError(f"image '{image.id}' already exists") from None

    def image(self, image_id: str) -> Image | None:
        with self.session() as s:
            return s.get(Image, image_id)

    def images(self) -> list[Image]:
        with self.session() as s:
            return list(s.scalars(select(Image).order_by(Image.id)))

    def region(self, region_id: str) -> Region | None:
        with self.session() as s:
            return s.get(Region, region_id)

    def regions(self, image_id: str | None = None) -> list[Region]:
        """Every region (of one image), images in id order, regions in z, y, x order."""
        with self.session() as s:
            query = select(Region).order_by(Region.image_id, Region.position)
            if image_id is not None:
                query = query.where(Region.image_id == image_id)
            return list(s.scalars(query))

    def region_infos(self) -> dict[str, dict[str, Any] | None]:
        """Every region's client metadata, in one query."""
        with self.session() as s:
            return dict(s.execute(select(Region.id, Region.info)).all())

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Merge ``info`` into an image's client metadata; concurrent updates are all kept."""
        return self._merge_info(Image, image_id, info)

    def set_image_intensity(self, image_id: str, intensity: dict[str, Any]) -> None:
        """Replace an image's intensity statistics (recomputed when a newer server needs more of them)."""

        def write() -> None:
            with self.session() as s, s.begin():
                _lock_for_write(s)
                row = s.get(Image, image_id, with_for_update=True)
                if row is None:
                    raise KeyError(image_id)
                row.intensity = intensity

        _retry_when_locked(write)

    def update_region_info(self, region_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Merge ``info`` into a region's client metadata; concurrent updates are all kept."""
        return self._merge_info(Region, region_id, info)

    def _merge_info(self, table: type[Image] | type[Region], key: str, info: dict[str, Any]) -> dict[str, Any]:
        def merge() -> dict[str, Any]:
            with self.session() as s, s.begin():
                _lock_for_write(s)
                row = s.get(table, key, with_for_update=True)
                if row is None:
                    raise KeyError(key)
                row.info = {**(row.info or {}), **info}  # reassign: JSON columns do not track in-place changes
                return dict(row.info)

        return _retry_when_locked(merge)

    def update_label_version_info(self, region_id: str, structure: str, tag: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the latest label version's metadata."""

        def merge() -> None:
            with self.session() as s, s.begin():
                _lock_for_write(s)
                row = s.scalar(
                    select(LabelVersion)
                    .where(
                        LabelVersion.region_id == region_id,
                        LabelVersion.structure == structure,
                        LabelVersion.tag == tag,
                    )
                    .order_by(LabelVersion.version.desc())
                    .limit(1)
                    .with_for_update()
                )
                if row is not None:
                    row.info = {**(row.info or {}), **info}

        _retry_when_locked(merge)

    def remove_image(self, image_id: str) -> None:
        """Forget an image with its regions, leases, scores and label history rows."""
        with self.session() as s, s.begin():
            regions = select(Region.id).where(Region.image_id == image_id)
            for table in (Lease, Score):
                s.execute(delete(table).where(table.image_id.in_(regions)))
            s.execute(delete(LabelVersion).where(LabelVersion.image_id == image_id))
            s.execute(delete(Region).where(Region.image_id == image_id))
            s.execute(delete(Image).where(Image.id == image_id))

    # label versions -------------------------------------------------------------------------
    def add_label_version(
        self,
        region: Region,
        structure: str,
        tag: str,
        path: str,
        checksum: str,
        client_id: str | None = None,
        model_version_id: int | None = None,
        info: dict[str, Any] | None = None,
    ) -> LabelVersion:
        """Record a new label version: one more than the latest of (region, structure, tag), whoever saves
        concurrently."""
        for _ in range(_VERSION_RETRIES):
            try:
                with self.session() as s, s.begin():
                    latest = s.scalar(
                        select(func.max(LabelVersion.version)).where(
                            LabelVersion.region_id == region.id,
                            LabelVersion.structure == structure,
                            LabelVersion.tag == tag,
                        )
                    )
                    row = LabelVersion(
                        image_id=region.image_id,
                        region_id=region.id,
                        structure=structure,
                        tag=tag,
                        version=(latest or 0) + 1,
                        path=path,
                        checksum=checksum,
                        client_id=client_id,
                        model_version_id=model_version_id,
                        info=info,
                    )
                    s.add(row)
                return row
            except IntegrityError:
                if self.region(region.id) is None:
                    raise KeyError(f"region '{region.id}' is not recorded in the database") from None
                continue  # another save took this version number; take the next one
            except OperationalError as e:  # SQLite: another writer holds the file a moment longer
                if "locked" not in str(e):
                    raise
                time.sleep(0.05)
        raise RuntimeError(f"could not record a label version for '{region.id}' after {_VERSION_RETRIES} attempts")

    def label_versions(self, region_id: str, tag: str = "final", structure: str | None = None) -> list[LabelVersion]:
        """A region's label versions (of one structure), oldest first; legacy rows of an image of that id too."""
        with self.session() as s:
            query = select(LabelVersion).where(
                or_(
                    LabelVersion.region_id == region_id,
                    (LabelVersion.region_id.is_(None)) & (LabelVersion.image_id == region_id),
                ),
                LabelVersion.tag == tag,
            )
            if structure is not None:
                query = query.where(LabelVersion.structure == structure)
            return list(s.scalars(query.order_by(LabelVersion.id)))

    def label_version(
        self, region_id: str, structure: str, tag: str, version: int | None = None
    ) -> LabelVersion | None:
        """The given version, or the latest one when ``version`` is None."""
        with self.session() as s:
            query = select(LabelVersion).where(
                LabelVersion.region_id == region_id, LabelVersion.structure == structure, LabelVersion.tag == tag
            )
            if version is None:
                query = query.order_by(LabelVersion.version.desc()).limit(1)
            else:
                query = query.where(LabelVersion.version == version)
            return s.scalar(query)

    def latest_label_versions(self, region_id: str | None = None) -> dict[tuple[str, str], LabelVersion]:
        """``{(region, tag): row}``: the most recently saved version of any structure, per region and tag."""
        with self.session() as s:
            newest = select(func.max(LabelVersion.id)).where(
                LabelVersion.region_id.is_not(None), LabelVersion.structure.is_not(None)
            )
            if region_id is not None:
                newest = newest.where(LabelVersion.region_id == region_id)
            newest = newest.group_by(LabelVersion.region_id, LabelVersion.tag)
            rows = s.scalars(select(LabelVersion).where(LabelVersion.id.in_(newest.scalar_subquery())))
            return {(row.region_id, row.tag): row for row in rows}

    def labelled_regions(self, tag: str = "final", structure: str | None = None) -> dict[str, list[str]]:
        """``{region id: [structures]}`` of regions with a ``tag`` label (of ``structure``)."""
        with self.session() as s:
            query = select(LabelVersion.region_id, LabelVersion.structure).where(
                LabelVersion.tag == tag, LabelVersion.region_id.is_not(None)
            )
            if structure is not None:
                query = query.where(LabelVersion.structure == structure)
            out: dict[str, list[str]] = {}
            for region_id, name in s.execute(query.distinct()):
                out.setdefault(region_id, []).append(name)
        return out

    def count_labelled_regions(self, structure: str, tag: str = "final", since: datetime | None = None) -> int:
        """Regions given a ``tag`` label of ``structure`` (each counted once), only saves after ``since``."""
        with self.session() as s:
            query = select(func.count(func.distinct(LabelVersion.region_id))).where(
                LabelVersion.tag == tag, LabelVersion.structure == structure, LabelVersion.region_id.is_not(None)
            )
            if since is not None:
                query = query.where(LabelVersion.created_at > since)
            return int(s.scalar(query) or 0)

    # annotator leases -----------------------------------------------------------------------
    def acquire_lease(self, image_id: str, client_id: str, seconds: float, max_leases: int | None = None) -> bool:
        """Claim ``image_id`` for ``client_id``; False if another client holds a live lease.

        The image's primary key in ``leases`` makes the claim atomic across API processes. With
        ``max_leases``, the holder's oldest leases beyond that many are released (an annotator who asks for
        another sample has moved on), so no one holds more of the pool than that.
        """
        now = utcnow()
        expires = now + timedelta(seconds=seconds)
        try:
            with self.session() as s, s.begin():
                s.execute(delete(Lease).where(Lease.image_id == image_id, Lease.expires_at <= now))
                held = s.get(Lease, image_id)
                if held is not None:
                    if held.client_id != client_id:
                        return False
                    held.expires_at = expires  # renew our own lease
                else:
                    s.add(Lease(image_id=image_id, client_id=client_id, acquired_at=now, expires_at=expires))
                if max_leases is not None:
                    s.flush()
                    mine = s.scalars(
                        select(Lease.image_id)
                        .where(Lease.client_id == client_id, Lease.expires_at > now, Lease.image_id != image_id)
                        .order_by(Lease.acquired_at.desc())
                    ).all()
                    surplus = mine[max(max_leases - 1, 0) :]
                    if surplus:
                        s.execute(delete(Lease).where(Lease.image_id.in_(surplus)))
            return True
        except IntegrityError:
            return False  # another process claimed it between our check and insert

    def release_lease(self, image_id: str, client_id: str | None = None) -> None:
        with self.session() as s, s.begin():
            query = delete(Lease).where(Lease.image_id == image_id)
            if client_id is not None:
                query = query.where(Lease.client_id == client_id)
            s.execute(query)

    def lease_holder(self, image_id: str) -> str | None:
        """Who holds a live lease on ``image_id``, if anyone."""
        with self.session() as s:
            query = select(Lease.client_id).where(Lease.image_id == image_id, Lease.expires_at > utcnow())
            return s.scalar(query)

    def remove_label_version(self, row_id: int) -> None:
        """Undo :meth:`add_label_version` whose label could not be written (nothing may point at a file that
        does not hold it)."""
        with self.session() as s, s.begin():
            s.execute(delete(LabelVersion).where(LabelVersion.id == row_id))

    def leased_by_others(self, client_id: str) -> set[str]:
        """Images with a live lease held by anyone but ``client_id``."""
        with self.session() as s:
            query = select(Lease.image_id).where(Lease.client_id != client_id, Lease.expires_at > utcnow())
            return set(s.scalars(query))

    def leases(self) -> list[Lease]:
        """Live leases."""
        with self.session() as s:
            return list(s.scalars(select(Lease).where(Lease.expires_at > utcnow())))

    # users and uploads ----------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str) -> User:
        """A new account; IntegrityError if ``name`` is taken."""
        with self.session() as s, s.begin():
            user = User(name=name, role=role, password_hash=password_hash, created_at=utcnow(), tokens_after=utcnow())
            s.add(user)
        return user

    def update_user(self, name: str, **values: Any) -> User | None:
        with self.session() as s, s.begin():
            user = s.get(User, name)
            if user is None:
                return None
            for key, value in values.items():
                setattr(user, key, value)
        return user

    def user(self, name: str) -> User | None:
        with self.session() as s:
            return s.get(User, name)

    def users(self) -> list[User]:
        with self.session() as s:
            return list(s.scalars(select(User).order_by(User.name)))

    def remove_user(self, name: str) -> bool:
        with self.session() as s, s.begin():
            return s.execute(delete(User).where(User.name == name)).rowcount > 0

    def record_upload(self, image_id: str, owner: str, size: int) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Image).where(Image.id == image_id).values(owner=owner, upload_bytes=size))

    def uploaded_bytes(self, owner: str) -> int:
        """What ``owner``'s images still in the datastore took to upload (their quota's use)."""
        with self.session() as s:
            return int(s.scalar(select(func.sum(Image.upload_bytes)).where(Image.owner == owner)) or 0)

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
            return s.execute(update(TrainingRun).where(unfinished).values(**values)).rowcount == 1

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
