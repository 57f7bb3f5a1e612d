"""MONAI Label's ``Datastore`` interface over the chunked volume store (voxels) and SQL (the one index).

- **Images** are volumes in the store (``lib.volumes.store``): ingested into OME-Zarr by streaming,
  or Zarr/N5 registered in place from a folder listed in ``AXONSEG_VOLUME_ROOTS``. The database row
  holds what the server knows of them; geometry is the server's, clients only add metadata.
- **Regions** are what MONAI Label calls images: a small image is one region under its own id, a
  large one is tiled into regions (rows, not copies). Next sample leases a region, scores are per
  region, and ``GET /datastore/image`` serves a region as a NRRD crop cut from the chunks on demand
  (cached within ``view_cache_mb``), placed at its physical position.
- **Labels** belong to a structure: one uint32 label array per (image, structure, tag) aligned with
  the regions, written only where a region's label lands. Every save is also a version (its own
  NRRD crop plus a ``label_versions`` row: who, when, model version, checksum); the array holds the
  latest. A label with several structures (Slicer's ``label_info`` segment names) is split by name.
- Every normalisation uses the image's intensity statistics, computed once at ingest.

Nothing here loads a whole volume, except to serve a whole image or read a file format that cannot
be streamed (NRRD/NIfTI), both bounded by ``max_voxels_in_memory``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from .activelearning.leases import check_may_save
from .auth.identity import caller
from .configs.spec import StructureSpec
from .db.models import Image, LabelVersion, Region
from .db.store import Database
from .errors import InvalidRequest, NotFound, UploadTooLarge, VolumeError
from .identifiers import check_name, safe_join
from .params import Range
from .transforms.intensity import IntensityStats, StatsAccumulator
from .transforms.io import Volume, remove_path, write_volume
from .volumes.formats import VolumeSource, open_source, volume_format
from .volumes.regions import Roi, align, grid, needs_regions
from .volumes.regions import region_id as make_region_id
from .volumes.store import DEFAULT_CHUNKS, StoredImage, VolumeStore, chunks_for, tiles

logger = logging.getLogger(__name__)

MODALITIES = ("em", "light-sheet")
# Info fields the server sets; clients cannot overwrite them (PUT /datastore/image/info, upload params).
SERVER_FIELDS = frozenset(
    {
        "id", "image", "region", "parent", "offset", "shape", "dataset", "voxel_size_um", "spacing_um",
        "storage_uri", "modality", "structures", "chunks", "dtype", "intensity", "format", "levels", "path",
        "name", "origin_um", "registered", "labels",
    }
)  # fmt: skip
# Label info fields that name who saved a label: the server records them (client_id from the caller's identity).
SERVER_LABEL_FIELDS = frozenset({"user", "owner", "username", "created_by"})
MAX_TAG_LENGTH = 64
LABEL_VALUE = Range(0, np.iinfo(np.uint32).max, integer=True)
# Upload parameters that choose how a file is read, not what the server records.
UPLOAD_OPTIONS = ("dataset", "modality")
DEFAULT_REGION_SIZE = (64, 256, 256)
DEFAULT_MAX_VOXELS_IN_MEMORY = 512 * 1024**2  # 0.5 Gvox: a 2 GB float32 array
DEFAULT_MAX_IMAGE_VOXELS = 256 * 1024**3  # an ExLLSM volume is 163 Gvox
# An upload whose file is this many times smaller than the voxels it declares is refused: microscopy
# compresses a few-fold, not a thousand-fold (a 1.4 KB HDF5 file can declare 64 Gvox of fill value).
MAX_UPLOAD_EXPANSION = 1000


# Readers of registered volumes, by (container, dataset), shared by every datastore of this process.
_REGISTERED: dict[tuple[str | None, str | None], VolumeSource] = {}
_REGISTERED_LOCK = threading.Lock()


def check_image_id(image_id: str) -> str:
    """Reject ids that are not plain names (``../../etc/passwd``, absolute paths, newlines, empty)."""
    return check_name(image_id, "image id")


def guess_modality(voxel_size: tuple[float, float, float] | None) -> str | None:
    """EM pixels are nanometres, light-sheet and expansion microscopy voxels a fraction of a micrometre or more."""
    if voxel_size is None:
        return None
    return "em" if voxel_size[2] < 0.05 else "light-sheet"


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


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


class MicroscopyDatastore(Datastore):
    """Args:
    studies: the folder MONAI Label was started on; volume files found there are ingested at start-up.
    workdir: holds ``volumes/`` (the store), ``views/`` (NRRD crop cache) and ``label_versions/``.
    db: the index.
    specs: the structures, by model name (their label names and modalities).
    region_size: regions of large images, (z, y, x) voxels (rounded up to whole chunks); None: no tiling.
    max_voxels_in_memory: the most voxels a request may make the server hold at once (whole-image
        views, NRRD/NIfTI files); above it requests are refused with 413.
    max_image_voxels: the largest image accepted (a tiny HDF5 file can declare a huge dataset).
    volume_roots: folders whose Zarr/N5 volumes may be registered in place (read-only).
    dataset: default dataset inside HDF5/Zarr/N5 files.
    on_final_label: called with ``(region_id, structure, label_info)`` after each final label version
        (the retrain trigger); its errors are logged and never lose the label.
    view_cache_mb: bound on the NRRD crops kept in ``views/``.
    """

    def __init__(
        self,
        studies: str,
        workdir: str,
        db: Database,
        specs: dict[str, StructureSpec],
        region_size: tuple[int, int, int] | None = DEFAULT_REGION_SIZE,
        max_voxels_in_memory: int = DEFAULT_MAX_VOXELS_IN_MEMORY,
        max_image_voxels: int = DEFAULT_MAX_IMAGE_VOXELS,
        volume_roots: Iterable[str] = (),
        dataset: str | None = None,
        on_final_label: Callable[[str, str, dict[str, Any]], Any] | None = None,
        view_cache_mb: float = 2048,
    ):
        self._name = "axonseg"
        self._description = "Microscopy volumes in a chunked store, indexed in SQL"
        self.studies = os.path.abspath(studies)
        self.db = db
        self.specs = specs
        self.store = VolumeStore(os.path.join(workdir, "volumes"))
        self.views_path = os.path.join(workdir, "views")
        self.versions_path = os.path.join(workdir, "label_versions")
        self.locks_path = os.path.join(workdir, "locks")
        for folder in (self.views_path, self.versions_path, self.locks_path):
            os.makedirs(folder, exist_ok=True)
        self.region_size = tuple(int(v) for v in region_size) if region_size else None
        self.max_voxels_in_memory = int(max_voxels_in_memory)
        self.max_image_voxels = int(max_image_voxels)
        self.volume_roots = [os.path.realpath(r) for r in volume_roots if r]
        self.dataset = dataset
        self.on_final_label = on_final_label
        self.view_cache_bytes = int(view_cache_mb * 1e6)

    # --- MONAI Label's small interface ------------------------------------------------------
    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str) -> None:
        self._description = description

    def refresh(self) -> None:
        """Nothing to re-read: every process reads the database."""

    # --- structures and modalities ----------------------------------------------------------
    def structures_for(self, modality: str | None) -> list[str]:
        """The structures an image of ``modality`` may carry (all of them when the modality is unknown)."""
        return [n for n, s in self.specs.items() if modality is None or s.modality_group == modality]

    def structure_of(self, name: str) -> str | None:
        """A structure by model name or label name (Slicer names segments after the label), any case."""
        key = str(name).strip().lower()
        for model, spec in self.specs.items():
            if key in (model.lower(), spec.label_name.lower()):
                return model
        return None

    # --- adding images ----------------------------------------------------------------------
    def add_image(
        self,
        image_id: str,
        image_filename: str,
        image_info: dict[str, Any],
        replace_legacy: bool = False,
        upload: bool = False,
    ) -> str:
        """Ingest an uploaded or found file; a bad file raises a 4xx and stores nothing.

        ``replace_legacy``: the image is recorded from before the chunked store (``lib.volumes.upgrade``).
        ``upload``: the file came over HTTP, so it may not declare far more voxels than it holds.
        """
        info = dict(image_info or {})
        image_id = check_image_id(image_id or _stem(image_filename))
        existing = self.db.image(image_id)
        if existing is not None and not (replace_legacy and existing.storage_uri is None):
            raise InvalidRequest(f"image '{image_id}' already exists; delete it first or upload under another id")
        modality = _check_modality(info.get("modality"))
        with open_source(
            image_filename, info.get("dataset") or self.dataset, max_voxels_in_memory=self.max_voxels_in_memory
        ) as source:
            self._check_size(source)
            if upload:
                self._check_expansion(source, image_filename)
            stored = self.store.ingest(source, image_id, chunks=self._chunks(source.shape))
            try:
                self._record(image_id, source, stored, modality, image_filename, info, replace_legacy)
            except BaseException:
                self.store.remove(image_id)
                raise
        return image_id

    def register_volume(self, image_id: str, path: str, dataset: str | None = None, modality: str | None = None) -> str:
        """Use a Zarr/N5 volume inside one of ``volume_roots`` where it is, read-only."""
        image_id = check_image_id(image_id)
        real = os.path.realpath(path)
        root = next((r for r in self.volume_roots if real == r or real.startswith(r + os.sep)), None)
        if root is None:
            raise InvalidRequest(
                f"'{os.path.basename(path)}' is not inside a folder listed in AXONSEG_VOLUME_ROOTS; "
                "only volumes there can be registered in place"
            )
        if not real.lower().rstrip("/").endswith((".zarr", ".n5")):
            raise VolumeError("only Zarr and N5 volumes can be registered in place; upload other formats")
        if self.db.image(image_id) is not None:
            raise InvalidRequest(f"image '{image_id}' already exists")
        with open_source(real, dataset or self.dataset, root=root) as source:
            self._check_size(source)
            accumulator = StatsAccumulator(source.shape)
            # Whole chunk-aligned tiles: every chunk is decompressed once (reading only the sampled planes
            # would decompress each chunk once per plane).
            for roi in tiles(source.shape, source.chunks or chunks_for(source.shape)):
                accumulator.add(source.read(roi.slices), roi.offset)
            stored = self.store.register(source, image_id, accumulator.stats(), self._chunks(source.shape))
            try:
                self._record(image_id, source, stored, _check_modality(modality), path, {})
            except BaseException:
                self.store.remove(image_id)
                raise
        return image_id

    def _check_size(self, source: VolumeSource) -> None:
        voxels = math.prod(source.shape)
        if voxels > self.max_image_voxels:
            raise UploadTooLarge(
                f"'{os.path.basename(source.path)}' declares {source.shape} = {voxels / 1e9:.1f} Gvox, more than "
                f"this server's limit of {self.max_image_voxels / 1e9:.1f} Gvox (--conf max_image_voxels)"
            )

    @staticmethod
    def _check_expansion(source: VolumeSource, path: str) -> None:
        declared = math.prod(source.shape) * np.dtype(source.dtype).itemsize
        held = os.path.getsize(path) if os.path.isfile(path) else declared
        if declared > MAX_UPLOAD_EXPANSION * max(held, 1):
            raise UploadTooLarge(
                f"'{os.path.basename(path)}' declares {source.shape} = {declared / 1e9:.1f} GB of voxels but holds "
                f"only {held / 1e3:.0f} kB; a volume that large must be a file in the studies folder or a "
                "Zarr/N5 registered in place (POST /volumes/register)"
            )

    def _chunks(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The store's chunks: no larger than a region, so regions are whole chunks."""
        limit = tuple(min(c, r) for c, r in zip(DEFAULT_CHUNKS, self.region_size or DEFAULT_CHUNKS))
        return chunks_for(shape, limit)  # type: ignore[arg-type]

    def _region_rois(self, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> list[Roi]:
        if self.region_size and needs_regions(shape, self.region_size):
            return grid(shape, align(self.region_size, chunks))
        return [Roi.whole(shape)]

    def _record(
        self,
        image_id: str,
        source: VolumeSource,
        stored: StoredImage,
        modality: str | None,
        original: str,
        info: dict[str, Any],
        replace_legacy: bool = False,
    ) -> None:
        modality = modality or guess_modality(source.voxel_size)
        rois = self._region_rois(stored.shape, stored.chunks)
        whole = len(rois) == 1
        found = os.path.dirname(os.path.abspath(original)) == self.studies
        image = Image(
            id=image_id,
            original_path=os.path.abspath(original) if found else os.path.basename(original),
            format=source.source_format,
            shape=list(stored.shape),
            voxel_size_um=list(source.voxel_size) if source.voxel_size else None,
            modality=modality,
            structures=self.structures_for(modality),
            dtype=stored.dtype,
            chunks=list(stored.chunks),
            storage_uri=stored.uri,
            dataset=stored.dataset,
            registered=stored.registered,
            levels=stored.levels,
            intensity=stored.stats.to_json(),
            origin_um=list(source.origin),
            direction=None if source.direction is None else np.asarray(source.direction).tolist(),
            info={k: v for k, v in info.items() if k not in SERVER_FIELDS},
        )
        regions = [
            Region(
                id=make_region_id(image_id, roi, whole),
                image_id=image_id,
                offset=list(roi.offset),
                shape=list(roi.shape),
                whole=whole,
                position=i,
            )
            for i, roi in enumerate(rois)
        ]
        try:
            self.db.add_image(image, regions, replace_legacy)
        except KeyError as e:
            raise InvalidRequest(str(e).strip("'\"")) from None
        logger.info(
            f"Added image {image_id}: {source.source_format} {stored.shape} voxel size {source.voxel_size} µm, "
            f"{modality or 'unknown modality'}, {len(regions)} region(s)"
        )

    def add_found_files(self) -> list[str]:
        """Ingest the volume files in the studies folder that are not in the store yet (start-up)."""
        known = {row.id for row in self.db.images() if row.storage_uri}
        added = []
        for entry in sorted(os.listdir(self.studies)):
            path = os.path.join(self.studies, entry)
            if entry.startswith(".") or _stem(entry) in known or not _is_volume(path):
                continue
            try:
                added.append(self.add_image(_stem(entry), path, {}))
            except (VolumeError, InvalidRequest, UploadTooLarge) as e:
                logger.warning(f"not adding {entry} from {self.studies}: {e}")
        return added

    # --- images and regions -----------------------------------------------------------------
    def list_images(self) -> list[str]:
        return [r.id for r in self.db.regions()]

    def _region(self, region_id: str) -> Region:
        check_image_id(region_id)
        region = self.db.region(region_id)
        if region is None:
            raise NotFound(f"image '{region_id}' is not in the datastore")
        return region

    def _image(self, image_id: str) -> Image:
        image = self.db.image(image_id)
        if image is None:
            raise NotFound(f"image '{image_id}' is not in the datastore")
        return image

    def region_and_image(self, region_id: str) -> tuple[Region, Image]:
        region = self._region(region_id)
        return region, self._image(region.image_id)

    def stats(self, image: Image) -> IntensityStats:
        """The image's intensity statistics; images ingested before a percentile was stored
        (``STORED_PERCENTILES``) have them recomputed once, tile by tile, and saved."""
        stats = IntensityStats.from_json(image.intensity) if image.intensity else None
        if stats is not None and stats.has_all_percentiles():
            return stats
        logger.info("recomputing intensity statistics of '%s' (stored before this server version)", image.id)
        shape = tuple(image.shape)
        accumulator = StatsAccumulator(shape)  # type: ignore[arg-type]
        for roi in tiles(shape, tuple(image.chunks or chunks_for(shape))):  # type: ignore[arg-type]
            accumulator.add(self.read(image, roi), roi.offset)
        stats = accumulator.stats()
        self.db.set_image_intensity(image.id, stats.to_json())
        image.intensity = stats.to_json()
        return stats

    def _open(self, image: Image) -> VolumeSource:
        """A registered volume's reader, opened once per process: opening checks every entry of the
        container for links out of it, which is too slow to repeat for each region of a large volume."""
        key = (image.storage_uri, image.dataset)
        with _REGISTERED_LOCK:
            source = _REGISTERED.get(key)
            if source is None:
                source = _REGISTERED[key] = open_source(image.storage_uri, image.dataset or None)
        return source

    def read(self, image: Image, roi: Roi) -> np.ndarray:
        """Raw voxels of ``roi`` (only the chunks it touches are read)."""
        if image.registered:
            return self._open(image).read(roi.slices)
        return self.store.image_array(image.id)[roi.slices]

    def _region_or_whole(self, image_id: str) -> tuple[Region, Image]:
        """A region, or for the id of an image split into regions, the whole image as one (unsaved) region."""
        region = self.db.region(check_image_id(image_id))
        if region is not None:
            return region, self._image(region.image_id)
        image = self._image(image_id)
        return Region(id=image.id, image_id=image.id, offset=[0, 0, 0], shape=list(image.shape), whole=True), image

    def is_region(self, image_id: str) -> bool:
        return self.db.region(check_image_id(image_id)) is not None

    def read_region(self, region_id: str, context: tuple[int, int, int] = (0, 0, 0)) -> RegionData:
        """A region (or a whole image) with ``context`` voxels around it, clipped to the image."""
        region, image = self._region_or_whole(region_id)
        region_roi = Roi.of(region)
        read_roi = region_roi.grow(context, tuple(image.shape))  # type: ignore[arg-type]
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
            self._volume(image, read_roi, array),
            self._volume(image, region_roi, inner),
        )

    @staticmethod
    def _volume(image: Image, roi: Roi, array: np.ndarray) -> Volume:
        """``array`` (voxels of ``roi``) placed where ``roi`` lies: the origin moves by the offset, through
        the direction cosines, so a viewer shows the crop where it lies in the image."""
        spacing = tuple(image.voxel_size_um or (1.0, 1.0, 1.0))
        origin = np.array((image.origin_um or (0.0, 0.0, 0.0))[::-1], float)
        direction = np.eye(3) if image.direction is None else np.asarray(image.direction, float)
        offset_xyz = np.array(roi.offset[::-1], float) * np.array(spacing[::-1], float)
        origin_zyx = tuple((origin + direction @ offset_xyz)[::-1].tolist())
        return Volume(array, spacing, origin_zyx, None if image.direction is None else direction)  # type: ignore[arg-type]

    def get_image_uri(self, image_id: str) -> str:
        """A NRRD file of the region (or of a whole image within ``max_voxels_in_memory``), from the cache."""
        region, image = self._region_or_whole(image_id)  # an image split into regions may be asked for whole
        path = os.path.join(self.views_path, f"{region.id}.nrrd")
        if not os.path.exists(path):
            roi = Roi.of(region)
            if roi.size > self.max_voxels_in_memory:
                raise UploadTooLarge(
                    f"'{image_id}' is {roi.size / 1e9:.2f} Gvox, more than one view may hold "
                    f"({self.max_voxels_in_memory / 1e9:.2f} Gvox, --conf max_voxels_in_memory); "
                    f"ask for one of its regions instead (GET /datastore/?output=all lists them)"
                )
            write_volume(path, self._volume(image, roi, self.read(image, roi)))
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

    def get_image(self, image_id: str, params=None) -> Any:
        with open(self.get_image_uri(image_id), "rb") as f:
            return f.read()

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Client metadata, then the server's fields over it (a client cannot change geometry)."""
        region = self.db.region(check_image_id(image_id))
        image = self.db.image(region.image_id if region else image_id)
        if image is None:
            return {}
        info = self._image_info(image_id, region, image)
        if region is None:
            info["regions"] = len(self.db.regions(image.id))
        return info

    def _image_info(self, image_id: str, region: Region | None, image: Image) -> dict[str, Any]:
        info = {**(image.info or {}), **((region.info or {}) if region else {})}
        server = {
            "id": image_id,
            "image": image.id,
            "name": f"{image_id}.nrrd",
            "format": image.format,
            "dtype": image.dtype,
            "voxel_size_um": image.voxel_size_um,
            "spacing_um": image.voxel_size_um or [1.0, 1.0, 1.0],
            "modality": image.modality,
            "structures": image.structures,
            "registered": image.registered,
        }
        if region is not None:
            server.update(region=region.id, shape=region.shape, offset=region.offset)
            if not region.whole:
                server["parent"] = image.id
        else:
            server.update(shape=image.shape, offset=[0, 0, 0])
        if caller().may("admin"):  # where the crop lies on the server: for admins (Slicer on the same machine)
            server["path"] = os.path.join(self.views_path, f"{image_id}.nrrd")
        else:
            info.pop("path", None)
        return {**info, **server}

    def last_served(self, strategy: str) -> dict[str, int]:
        """``{region: time}`` of the regions MONAI Label's next sample last handed out with ``strategy``."""
        out = {}
        for region_id, info in self.db.region_infos().items():
            ts = ((info or {}).get("strategy") or {}).get(strategy, {}).get("ts")
            if ts is not None:
                out[region_id] = int(ts)
        return out

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge client metadata; the server's fields are refused."""
        refused = sorted(set(info) & SERVER_FIELDS)
        if refused:
            raise InvalidRequest(f"{', '.join(refused)} are set by the server and cannot be changed")
        region = self.db.region(check_image_id(image_id))
        if region is not None:
            self.db.update_region_info(region.id, info)
        else:
            self._image(image_id)
            self.db.update_image_info(image_id, info)

    def remove_image(self, image_id: str) -> None:
        """Remove an image (by its id or any of its regions') with its labels and history."""
        region = self.db.region(check_image_id(image_id))
        image = self._image(region.image_id if region else image_id)
        regions = self.db.regions(image.id)
        with _REGISTERED_LOCK:
            cached = _REGISTERED.pop((image.storage_uri, image.dataset), None)
        if cached is not None:
            cached.close()
        outputs = [job.folder for job in self.db.volume_jobs(image_id=image.id)]  # whole-volume job outputs
        self.db.remove_image(image.id)
        self.store.remove(image.id)
        for folder in outputs:
            shutil.rmtree(folder, ignore_errors=True)
        if os.path.dirname(image.original_path) == self.studies:  # found there: it would be added again
            remove_path(image.original_path)
        for r in regions:
            remove_path(os.path.join(self.views_path, f"{r.id}.nrrd"))
            remove_path(os.path.join(self.versions_path, r.id))

    # --- labels -----------------------------------------------------------------------------
    def _lock(self, image_id: str, structure: str, tag: str) -> FileLock:
        return FileLock(safe_join(self.locks_path, f"{image_id}.{structure}.{tag}.lock"))

    @staticmethod
    def _array_name(structure: str, tag: str) -> str:
        return structure if tag == DefaultLabelTag.FINAL.value else f"{structure}-{tag}"

    def split_structures(self, array: np.ndarray, label_info: dict[str, Any], image: Image) -> dict[str, np.ndarray]:
        """Which structures a saved label map holds: Slicer's ``label_info`` segment names split it by
        value; otherwise the ``model``/``structure`` it names (or the image's only structure) gets it whole."""
        segments = label_info.get("label_info")
        allowed = image.structures or list(self.specs)
        if isinstance(segments, list) and segments:
            parts: dict[str, np.ndarray] = {}
            for segment in segments:
                if not isinstance(segment, dict):
                    continue
                structure = self.structure_of(str(segment.get("name", "")))
                value = segment.get("idx", segment.get("id"))
                if structure is None or value is None:
                    continue
                value = LABEL_VALUE.check("label_info idx", value, f" (segment '{structure}')")
                mask = (array == value).astype(np.uint32)
                parts[structure] = np.maximum(parts[structure], mask) if structure in parts else mask
            if parts:
                return self._allowed(parts, allowed, image)
        named = label_info.get("structure") or label_info.get("model")
        if named:
            structure = self.structure_of(str(named))
            if structure is None:
                raise InvalidRequest(f"unknown structure '{named}'; known: {', '.join(self.specs)}")
            return self._allowed({structure: array}, allowed, image)
        if len(allowed) == 1:
            return {allowed[0]: array}
        raise InvalidRequest(
            f"say which structure this label is: name its segments after one of {', '.join(allowed)} "
            '(Slicer\'s label_info) or send params {"model": NAME}'
        )

    @staticmethod
    def _allowed(parts: dict[str, np.ndarray], allowed: list[str], image: Image) -> dict[str, np.ndarray]:
        wrong = sorted(set(parts) - set(allowed))
        if wrong:
            raise InvalidRequest(
                f"image '{image.id}' is {image.modality or 'of unknown modality'}: it can carry "
                f"{', '.join(allowed)} labels, not {', '.join(wrong)}"
            )
        return parts

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check a label file against its region and store it as the newest version of each structure it holds."""
        region = self._region(image_id)
        with open_source(label_filename, max_voxels_in_memory=self.max_voxels_in_memory) as source:
            if tuple(source.shape) != tuple(region.shape):
                raise VolumeError(
                    f"label shape {tuple(source.shape)} does not match image '{image_id}' shape {tuple(region.shape)}"
                )
            array = source.read(Roi.whole(source.shape).slices)
        return self.save_label_array(image_id, array, label_tag, label_info)

    def save_label_array(self, image_id: str, array: np.ndarray, label_tag: str, label_info: dict[str, Any]) -> str:
        """A label map of a region (its shape) as the newest version of each structure it holds; Slicer's files
        and DICOM SEGs from a viewer both come here."""
        region, image = self.region_and_image(image_id)
        tag = check_name(label_tag or DefaultLabelTag.FINAL.value, "label tag", MAX_TAG_LENGTH)
        info = dict(label_info or {})
        forged = sorted(set(info) & SERVER_LABEL_FIELDS)
        if forged:
            raise InvalidRequest(f"{', '.join(forged)} of a label are recorded by the server, not sent")
        if tuple(array.shape) != tuple(region.shape):
            raise VolumeError(
                f"label shape {tuple(array.shape)} does not match image '{image_id}' shape {tuple(region.shape)}"
            )
        fractional = not np.issubdtype(array.dtype, np.integer) and (
            not np.all(np.isfinite(array)) or np.any(array != np.round(array))
        )
        if array.size and (fractional or array.min() < 0):
            raise VolumeError("a label must hold whole, non-negative numbers (label values or object ids)")
        if array.size and array.max() > np.iinfo(np.uint32).max:
            raise VolumeError("label values above 4294967295 do not fit the uint32 label arrays")
        parts = self.split_structures(array, info, image)
        if tag == DefaultLabelTag.FINAL.value:  # last: a request that is wrong anyway says so first
            check_may_save(self.db, region.id, info.get("client_id"))
        for structure, part in parts.items():
            self.write_label(region, image, structure, tag, part, info)
        return image_id

    def write_label(
        self, region: Region, image: Image, structure: str, tag: str, array: np.ndarray, info: dict[str, Any]
    ) -> LabelVersion:
        """One label version: its own file, its row, then the label array (which holds the latest)."""
        array = np.asarray(array, dtype=np.uint32)
        roi = Roi.of(region)
        folder = safe_join(self.versions_path, region.id, structure, tag)  # the names again, where they become a path
        os.makedirs(folder, exist_ok=True)
        kept = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.nrrd")
        write_volume(kept, self._volume(image, roi, array))
        model = info.get("model") if info.get("model") in self.specs else structure
        active = self.db.active_model_version(model)  # the weights that predicted (or were corrected)
        recorded = {k: v for k, v in info.items() if k not in ("client_id", "label_info")}
        with self._lock(image.id, structure, tag):
            try:
                row = self.db.add_label_version(
                    region,
                    structure,
                    tag,
                    kept,
                    _checksum(array),
                    client_id=info.get("client_id"),
                    model_version_id=active.id if active else None,
                    info=recorded,
                )
            except KeyError as e:  # the image was removed meanwhile
                remove_path(kept)
                raise NotFound(str(e).strip("'\"")) from None
            shape, chunks = tuple(image.shape), tuple(image.chunks)
            name = self._array_name(structure, tag)
            try:
                self.store.write_label(image.id, name, roi, array, shape, chunks, image.voxel_size_um)  # type: ignore[arg-type]
            except BaseException:  # no row may name a version the label array does not hold
                self.db.remove_label_version(row.id)
                remove_path(kept)
                raise
        if tag == DefaultLabelTag.FINAL.value:
            self.db.release_lease(region.id)  # labelled now: the annotator's claim has served its purpose
            if self.on_final_label is not None:
                try:
                    self.on_final_label(region.id, structure, info)
                except Exception:
                    logger.exception(f"after saving the final {structure} label of '{region.id}'")
        return row

    def read_label(self, region_id: str, structure: str, tag: str = DefaultLabelTag.FINAL.value) -> np.ndarray | None:
        """The latest label of a region for one structure, or None if it has none."""
        region, image = self.region_and_image(region_id)
        if self.db.label_version(region.id, structure, tag) is None:
            return None
        roi = Roi.of(region)
        return self.store.read_label(image.id, self._array_name(structure, tag), roi)

    def latest_structure(self, region_id: str, tag: str) -> str | None:
        """The structure whose label of ``tag`` was saved last on the region."""
        row = self.db.latest_label_versions(region_id).get((region_id, tag))
        return row.structure if row is not None else None

    def get_label_uri(self, label_id: str, label_tag: str, structure: str | None = None) -> str:
        """The latest version's file for (region, structure, tag): the most recently saved structure by default."""
        check_image_id(label_id)
        structure = structure or self.latest_structure(label_id, label_tag)
        row = self.db.label_version(label_id, structure, label_tag) if structure else None
        return row.path if row is not None and os.path.exists(row.path) else ""

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        path = self.get_label_uri(label_id, label_tag)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return {
            tag: uri for tag in (DefaultLabelTag.FINAL.value, "original") if (uri := self.get_label_uri(image_id, tag))
        }

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return self.get_label_uri(image_id, tag)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return self._label_info(self.db.latest_label_versions(label_id).get((label_id, label_tag)))

    @staticmethod
    def _label_info(row: LabelVersion | None) -> dict[str, Any]:
        if row is None:
            return {}
        return {
            **(row.info or {}),
            "structure": row.structure,
            "version": row.version,
            "client_id": row.client_id,
            "checksum": row.checksum,
            "model_version": row.model_version_id,
            "ts": int(row.created_at.timestamp()),
            "name": os.path.basename(row.path),
        }

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        structure = self.latest_structure(label_id, label_tag)
        if structure is None:
            raise NotFound(f"image '{label_id}' has no '{label_tag}' label")
        self.db.update_label_version_info(label_id, structure, label_tag, info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise InvalidRequest("label versions are kept; save a corrected label instead (GET /labels/{image}/versions)")

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Regions with a label of ``label_tag`` (final by default) of any of ``labels`` (structures)."""
        labelled = self.db.labelled_regions(label_tag or DefaultLabelTag.FINAL.value)
        wanted = set(labels) if labels else None
        return [r for r in self.list_images() if r in labelled and (wanted is None or wanted & set(labelled[r]))]

    def get_unlabeled_images(
        self, label_tag: str | None = None, labels: list[str] | None = None, structure: str | None = None
    ) -> list[str]:
        """Regions without a final label (of ``structure``, among images that may carry it)."""
        labelled = self.db.labelled_regions(label_tag or DefaultLabelTag.FINAL.value, structure)
        if structure is None:
            return [r for r in self.list_images() if r not in labelled]
        allowed = {i.id for i in self.db.images() if structure in (i.structures or [])}
        return [r.id for r in self.db.regions() if r.image_id in allowed and r.id not in labelled]

    def training_regions(self, structure: str, tag: str = DefaultLabelTag.FINAL.value) -> list[str]:
        """Regions with a ``structure`` label, on images of a modality that structure suits, in id order."""
        labelled = self.db.labelled_regions(tag, structure)
        allowed = {i.id for i in self.db.images() if structure in (i.structures or [])}
        return sorted(r.id for r in self.db.regions() if r.id in labelled and r.image_id in allowed)

    def datalist(self) -> list[dict[str, Any]]:
        """Labelled regions as MONAI Label lists them; ``image``/``label`` are ids (crops are made on demand)."""
        labelled = self.db.labelled_regions(DefaultLabelTag.FINAL.value)
        return [
            {"image": r, "label": r, "structures": sorted(labelled[r])} for r in self.list_images() if r in labelled
        ]

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        raise InvalidRequest("a whole-dataset archive is not offered for chunked volumes; download regions instead")

    def status(self) -> dict[str, Any]:
        regions = self.list_images()
        labelled = self.db.labelled_regions(DefaultLabelTag.FINAL.value)
        return {
            "total": len(regions),
            "completed": sum(1 for r in regions if r in labelled),
            "images": len(self.db.images()),
            "label_tags": {DefaultLabelTag.FINAL.value: len(labelled)},
        }

    def json(self) -> dict[str, Any]:
        """Every region with its info and latest labels, in three queries (Slicer asks after each next sample)."""
        images = {image.id: image for image in self.db.images()}
        latest = self.db.latest_label_versions()
        objects = {}
        for region in self.db.regions():
            labels = {
                tag: {"info": self._label_info(row), "ext": ".nrrd"}
                for tag in (DefaultLabelTag.FINAL.value, "original")
                if (row := latest.get((region.id, tag))) is not None
            }
            info = self._image_info(region.id, region, images[region.image_id])
            objects[region.id] = {"image": {"info": info, "ext": ".nrrd"}, "labels": labels}
        return {"name": self._name, "description": self._description, "objects": objects}


def _stem(path: str) -> str:
    name = os.path.basename(str(path).rstrip("/"))
    for ext in (".ome.zarr", ".ome.tiff", ".ome.tif", ".nii.gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _is_volume(path: str) -> bool:
    try:
        volume_format(path)
        return True
    except VolumeError:
        return False


def _check_modality(value: Any) -> str | None:
    if value in (None, ""):
        return None
    key = str(value).strip().lower().replace("_", "-")
    aliases = {"lightsheet": "light-sheet", "light-sheet": "light-sheet", "expansion": "light-sheet", "em": "em"}
    if key not in aliases and not key.startswith("electron"):
        raise InvalidRequest(f"modality must be one of {', '.join(MODALITIES)}, not '{value}'")
    return aliases.get(key, "em")
