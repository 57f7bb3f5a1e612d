"""Reading images and their regions: raw voxels from the chunked store or a registered volume, a region with
context for a model, and the NRRD crops viewers download (cached within ``view_cache_mb``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import numpy as np

from ..db.models import Image, Region
from ..db.store import Database
from ..errors import NotFound, UploadTooLarge, VolumeError
from ..transforms.intensity import IntensityStats
from ..transforms.io import Volume, remove_path, write_volume
from ..volumes.formats import VolumeSource, open_source
from ..volumes.regions import Roi, Shape, voxel_size, zyx
from ..volumes.store import VolumeStore, chunks_for
from .ingest import check_image_id, intensity_statistics

logger = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS_IN_MEMORY = 512 * 1024**2  # 0.5 Gvox: a 2 GB float32 array


@dataclasses.dataclass(frozen=True)
class RegionData:
    """A region's voxels read with context, and where the region lies inside them."""

    array: np.ndarray  # raw intensities of ``read_roi``
    read_roi: Roi
    region_roi: Roi
    stats: IntensityStats
    volume: Volume  # ``array`` with the physical geometry of ``read_roi``
    region_volume: Volume  # the region's voxels with their physical geometry

    @property
    def inner(self) -> tuple[slice, slice, slice]:
        return self.region_roi.relative_to(self.read_roi)


def placed_volume(image: Image, roi: Roi, array: np.ndarray) -> Volume:
    """``array`` (voxels of ``roi``) placed where ``roi`` lies: the origin moves by the offset, through
    the direction cosines, so a viewer shows the crop where it lies in the image."""
    spacing = voxel_size(image.voxel_size_um) or (1.0, 1.0, 1.0)
    origin = np.array((image.origin_um or (0.0, 0.0, 0.0))[::-1], float)
    direction = np.eye(3) if image.direction is None else np.asarray(image.direction, float)
    offset_xyz = np.array(roi.offset[::-1], float) * np.array(spacing[::-1], float)
    x, y, z = (float(v) for v in origin + direction @ offset_xyz)
    return Volume(array, spacing, (z, y, x), None if image.direction is None else direction)


def image_shape(image: Image) -> Shape:
    """The image's (z, y, x) shape (recorded when it is ingested or registered)."""
    if not image.shape:
        raise VolumeError(f"image '{image.id}' has no recorded shape (its ingest did not finish)")
    return zyx(image.shape)


class RegisteredSources:
    """Readers of registered volumes, each opened once and kept: opening checks every entry of the container
    for links out of it, which is too slow to repeat for each region of a large volume. A worker keeps one
    for all its jobs (pass it to each datastore it makes)."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str | None, str | None], VolumeSource] = {}
        self._lock = threading.Lock()

    def get(self, image: Image) -> VolumeSource:
        key = (image.storage_uri, image.dataset)
        with self._lock:
            source = self._sources.get(key)
            if source is None:
                if image.storage_uri is None:
                    raise VolumeError(f"image '{image.id}' is not in the volume store")
                source = self._sources[key] = open_source(image.storage_uri, image.dataset or None)
        return source

    def forget(self, image: Image) -> None:
        """Close the image's reader, if one is open (the image is being removed)."""
        with self._lock:
            source = self._sources.pop((image.storage_uri, image.dataset), None)
        if source is not None:
            source.close()


class Regions:
    """Reads images and regions. Arguments as :class:`~lib.datastore.MicroscopyDatastore`'s; ``views_path``
    holds the NRRD crops, at most ``view_cache_bytes`` of them."""

    def __init__(
        self,
        db: Database,
        store: VolumeStore,
        views_path: str,
        max_voxels_in_memory: int,
        view_cache_bytes: int,
        sources: RegisteredSources,
    ):
        self.db = db
        self.store = store
        self.views_path = views_path
        self.max_voxels_in_memory = max_voxels_in_memory
        self.view_cache_bytes = view_cache_bytes
        self.sources = sources

    def region(self, region_id: str) -> Region:
        check_image_id(region_id)
        region = self.db.region(region_id)
        if region is None:
            raise NotFound(f"image '{region_id}' is not in the datastore")
        return region

    def image(self, image_id: str) -> Image:
        image = self.db.image(image_id)
        if image is None:
            raise NotFound(f"image '{image_id}' is not in the datastore")
        return image

    def region_and_image(self, region_id: str) -> tuple[Region, Image]:
        region = self.region(region_id)
        return region, self.image(region.image_id)

    def region_or_whole(self, image_id: str) -> tuple[Region, Image]:
        """A region, or for the id of an image split into regions, the whole image as one (unsaved) region."""
        region = self.db.region(check_image_id(image_id))
        if region is not None:
            return region, self.image(region.image_id)
        image = self.image(image_id)
        whole = Region(id=image.id, image_id=image.id, offset=[0, 0, 0], shape=list(image_shape(image)), whole=True)
        return whole, image

    def is_region(self, image_id: str) -> bool:
        return self.db.region(check_image_id(image_id)) is not None

    def stats(self, image: Image) -> IntensityStats:
        """The image's intensity statistics; images ingested before a percentile was stored
        (``STORED_PERCENTILES``) have them recomputed once, tile by tile, and saved."""
        stats = IntensityStats.from_json(image.intensity) if image.intensity else None
        if stats is not None and stats.has_all_percentiles():
            return stats
        logger.info("recomputing intensity statistics of '%s' (stored before this server version)", image.id)
        shape = image_shape(image)
        chunks = zyx(image.chunks or chunks_for(shape))
        stats = intensity_statistics(shape, chunks, lambda roi: self.read(image, roi))
        self.db.set_image_intensity(image.id, stats.to_json())
        image.intensity = stats.to_json()
        return stats

    def read(self, image: Image, roi: Roi) -> np.ndarray:
        """Raw voxels of ``roi`` (only the chunks it touches are read)."""
        if image.registered:
            return self.sources.get(image).read(roi.slices)
        return self.store.image_array(image.id)[roi.slices]

    def read_region(self, region_id: str, context: tuple[int, int, int] = (0, 0, 0)) -> RegionData:
        """A region (or a whole image) with ``context`` voxels around it, clipped to the image."""
        region, image = self.region_or_whole(region_id)
        region_roi = Roi.of(region)
        read_roi = region_roi.grow(context, image_shape(image))
        if read_roi.size > self.max_voxels_in_memory:
            raise UploadTooLarge(
                f"'{region_id}' with its context is {read_roi.size / 1e6:.0f} Mvox, more than this server holds "
                f"in memory at once ({self.max_voxels_in_memory / 1e6:.0f} Mvox, --conf max_voxels_in_memory)"
            )
        array = self.read(image, read_roi)
        inner = array[region_roi.relative_to(read_roi)]
        return RegionData(
            array,
            read_roi,
            region_roi,
            self.stats(image),
            placed_volume(image, read_roi, array),
            placed_volume(image, region_roi, inner),
        )

    def view_path(self, region_id: str) -> str:
        """Where the NRRD crop of a region (or a whole image) is kept."""
        return os.path.join(self.views_path, f"{region_id}.nrrd")

    def view(self, image_id: str) -> str:
        """A NRRD file of the region (or of a whole image within ``max_voxels_in_memory``), from the cache."""
        region, image = self.region_or_whole(image_id)  # an image split into regions may be asked for whole
        path = self.view_path(region.id)
        if not os.path.exists(path):
            roi = Roi.of(region)
            if roi.size > self.max_voxels_in_memory:
                raise UploadTooLarge(
                    f"'{image_id}' is {roi.size / 1e9:.2f} Gvox, more than one view may hold "
                    f"({self.max_voxels_in_memory / 1e9:.2f} Gvox, --conf max_voxels_in_memory); "
                    f"ask for one of its regions instead (GET /datastore/?output=all lists them)"
                )
            write_volume(path, placed_volume(image, roi, self.read(image, roi)))
            self._trim_views()
        else:
            os.utime(path)  # recently used
        return path

    def _trim_views(self) -> None:
        """Drop the least recently used crops beyond the cache bound."""
        files = []
        for entry in os.scandir(self.views_path):
            if entry.is_file() and ".part" not in entry.name:
                stat = entry.stat()
                files.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.view_cache_bytes:
                break
            remove_path(path)
            total -= size

    def drop_views(self, regions: list[Region]) -> None:
        """Drop the crops of a removed image's regions."""
        for region in regions:
            remove_path(self.view_path(region.id))
