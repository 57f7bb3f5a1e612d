"""Images into the datastore: uploads and found files streamed into the chunked store, Zarr/N5 registered in
place, each recorded with its regions and intensity statistics (computed once, here)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..configs.spec import StructureSpec
from ..db.models import Image, Region
from ..db.store import Database
from ..errors import InvalidRequest, UploadTooLarge, VolumeError
from ..identifiers import check_name
from ..transforms.intensity import IntensityStats, StatsAccumulator
from ..volumes.formats import VolumeSource, open_source, volume_format
from ..volumes.regions import Roi, align, grid, needs_regions, zyx
from ..volumes.regions import region_id as make_region_id
from ..volumes.store import DEFAULT_CHUNKS, StoredImage, VolumeStore, chunks_for, tiles

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
# Upload parameters that choose how a file is read, not what the server records.
UPLOAD_OPTIONS = ("dataset", "modality")
DEFAULT_REGION_SIZE = (64, 256, 256)
DEFAULT_MAX_IMAGE_VOXELS = 256 * 1024**3  # an ExLLSM volume is 163 Gvox
# An upload whose file is this many times smaller than the voxels it declares is refused: microscopy
# compresses a few-fold, not a thousand-fold (a 1.4 KB HDF5 file can declare 64 Gvox of fill value).
MAX_UPLOAD_EXPANSION = 1000


def check_image_id(image_id: str) -> str:
    """Reject ids that are not plain names (``../../etc/passwd``, absolute paths, newlines, empty)."""
    return check_name(image_id, "image id")


def guess_modality(voxel_size: tuple[float, float, float] | None) -> str | None:
    """EM pixels are nanometres, light-sheet and expansion microscopy voxels a fraction of a micrometre or more."""
    if voxel_size is None:
        return None
    return "em" if voxel_size[2] < 0.05 else "light-sheet"


def structures_for(specs: dict[str, StructureSpec], modality: str | None) -> list[str]:
    """The structures an image of ``modality`` may carry (all of them when the modality is unknown)."""
    return [n for n, s in specs.items() if modality is None or s.modality_group == modality]


def intensity_statistics(
    shape: tuple[int, int, int], chunks: tuple[int, int, int], read: Callable[[Roi], np.ndarray]
) -> IntensityStats:
    """An image's statistics from whole chunk-aligned tiles: every chunk is decompressed once (reading only
    the sampled planes would decompress each chunk once per plane)."""
    accumulator = StatsAccumulator(shape)
    for roi in tiles(shape, chunks):
        accumulator.add(read(roi), roi.offset)
    return accumulator.stats()


class Ingest:
    """Adds images: checks a file's size, stores its voxels, records it and its regions in one transaction.
    Arguments as :class:`~lib.datastore.MicroscopyDatastore`'s."""

    def __init__(
        self,
        db: Database,
        store: VolumeStore,
        studies: str,
        specs: dict[str, StructureSpec],
        region_size: tuple[int, int, int] | None,
        max_voxels_in_memory: int,
        max_image_voxels: int,
        volume_roots: Iterable[str],
        dataset: str | None,
    ):
        self.db = db
        self.store = store
        self.studies = studies
        self.specs = specs
        self.region_size = region_size
        self.max_voxels_in_memory = max_voxels_in_memory
        self.max_image_voxels = max_image_voxels
        self.volume_roots = [os.path.realpath(r) for r in volume_roots if r]
        self.dataset = dataset

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
            chunks = source.chunks or chunks_for(source.shape)
            stats = intensity_statistics(source.shape, chunks, lambda roi: source.read(roi.slices))
            stored = self.store.register(source, image_id, stats, self._chunks(source.shape))
            try:
                self._record(image_id, source, stored, _check_modality(modality), path, {})
            except BaseException:
                self.store.remove(image_id)
                raise
        return image_id

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
        limit = zyx(min(c, r) for c, r in zip(DEFAULT_CHUNKS, self.region_size or DEFAULT_CHUNKS))
        return chunks_for(shape, limit)

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
        """The image's row and its regions' rows, in one transaction (AlreadyExists if the id was taken)."""
        image = self._image_row(image_id, source, stored, modality or guess_modality(source.voxel_size), original)
        image.info = {k: v for k, v in info.items() if k not in SERVER_FIELDS}
        rois = self._region_rois(stored.shape, stored.chunks)
        whole = len(rois) == 1
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
        self.db.add_image(image, regions, replace_legacy)
        logger.info(
            f"Added image {image_id}: {source.source_format} {stored.shape} voxel size {source.voxel_size} µm, "
            f"{image.modality or 'unknown modality'}, {len(regions)} region(s)"
        )

    def _image_row(
        self, image_id: str, source: VolumeSource, stored: StoredImage, modality: str | None, original: str
    ) -> Image:
        found = os.path.dirname(os.path.abspath(original)) == self.studies
        return Image(
            id=image_id,
            original_path=os.path.abspath(original) if found else os.path.basename(original),
            format=source.source_format,
            shape=list(stored.shape),
            voxel_size_um=list(source.voxel_size) if source.voxel_size else None,
            modality=modality,
            structures=structures_for(self.specs, modality),
            dtype=stored.dtype,
            chunks=list(stored.chunks),
            storage_uri=stored.uri,
            dataset=stored.dataset,
            registered=stored.registered,
            levels=stored.levels,
            intensity=stored.stats.to_json(),
            origin_um=list(source.origin),
            direction=None if source.direction is None else np.asarray(source.direction).tolist(),
        )


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
