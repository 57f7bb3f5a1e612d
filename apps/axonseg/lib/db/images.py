"""Images and their regions: what the server knows of each volume and how it is tiled."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from .errors import AlreadyExists, NotFound
from .models import Image, LabelVersion, Lease, Region, Score
from .transactions import Sessions, lock_for_write, retry_when_locked

_WithInfo = TypeVar("_WithInfo", Image, Region)  # the tables whose rows carry client metadata (``info``)


class ImageRecords(Sessions):
    """Images and regions (``Database`` is one of these)."""

    def add_image(self, image: Image, regions: Iterable[Region], replace_legacy: bool = False) -> None:
        """Record an image with its regions in one transaction; AlreadyExists if the id is taken.

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
            raise AlreadyExists(f"image '{image.id}' already exists") from None

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
                lock_for_write(s)
                row = s.get(Image, image_id, with_for_update=True)
                if row is None:
                    raise NotFound(f"image '{image_id}' is not recorded in the database")
                row.intensity = intensity

        retry_when_locked(write)

    def update_region_info(self, region_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Merge ``info`` into a region's client metadata; concurrent updates are all kept."""
        return self._merge_info(Region, region_id, info)

    def _merge_info(self, table: type[_WithInfo], key: str, info: dict[str, Any]) -> dict[str, Any]:
        def merge() -> dict[str, Any]:
            with self.session() as s, s.begin():
                lock_for_write(s)
                row = s.get(table, key, with_for_update=True)
                if row is None:
                    raise NotFound(f"{table.__name__.lower()} '{key}' is not recorded in the database")
                row.info = {**(row.info or {}), **info}  # reassign: JSON columns do not track in-place changes
                return dict(row.info)

        return retry_when_locked(merge)

    def remove_image(self, image_id: str) -> None:
        """Forget an image with its regions, leases, scores and label history rows."""
        with self.session() as s, s.begin():
            regions = select(Region.id).where(Region.image_id == image_id)
            for table in (Lease, Score):
                s.execute(delete(table).where(table.image_id.in_(regions)))
            s.execute(delete(LabelVersion).where(LabelVersion.image_id == image_id))
            s.execute(delete(Region).where(Region.image_id == image_id))
            s.execute(delete(Image).where(Image.id == image_id))
