"""Label versions: every save of a region's label, numbered per (region, structure, tag)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from .errors import NotFound
from .models import LabelVersion, Region
from .transactions import Sessions, lock_for_write, retry_when_locked

# Saves that race for the same (image, tag, version) retry with the next number.
_VERSION_RETRIES = 50


class LabelRecords(Sessions):
    """Label versions (``Database`` is one of these)."""

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
        concurrently; NotFound when the region was removed meanwhile."""

        def insert() -> LabelVersion:
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

        for _ in range(_VERSION_RETRIES):
            try:
                return retry_when_locked(insert)
            except IntegrityError:
                with self.session() as s:
                    if s.get(Region, region.id) is None:
                        raise NotFound(f"region '{region.id}' is not recorded in the database") from None
                # another save took this version number; take the next one
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
            return {(row.region_id, row.tag): row for row in rows if row.region_id is not None}  # (all are)

    def labelled_regions(self, tag: str = "final", structure: str | None = None) -> dict[str, list[str | None]]:
        """``{region id: [structures]}`` of regions with a ``tag`` label (of ``structure``)."""
        with self.session() as s:
            query = select(LabelVersion.region_id, LabelVersion.structure).where(
                LabelVersion.tag == tag, LabelVersion.region_id.is_not(None)
            )
            if structure is not None:
                query = query.where(LabelVersion.structure == structure)
            out: dict[str, list[str | None]] = {}
            for region_id, name in s.execute(query.distinct()).tuples():
                if region_id is not None:  # (all are: the query asks for them)
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

    def remove_label_version(self, row_id: int) -> None:
        """Undo :meth:`add_label_version` whose label could not be written (nothing may point at a file that
        does not hold it)."""
        with self.session() as s, s.begin():
            s.execute(delete(LabelVersion).where(LabelVersion.id == row_id))

    def update_label_version_info(self, region_id: str, structure: str, tag: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the latest label version's metadata."""

        def merge() -> None:
            with self.session() as s, s.begin():
                lock_for_write(s)
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

        retry_when_locked(merge)
