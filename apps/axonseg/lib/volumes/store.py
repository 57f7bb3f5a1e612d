"""The chunked volume store: every image is an OME-Zarr (NGFF 0.4) group under one folder.

    <root>/<image>.ome.zarr/          multiscales: 0 (full resolution), 1, 2, ... (2x in-plane, 2x in z
                                      where z is not much coarser), voxel size in the scale transforms
    <root>/<image>.ome.zarr/labels/<name>/0   label arrays (uint32, chunks aligned with the image's),
                                      one per structure and tag (``axon``, ``axon-original``)

Images are written by streaming a :class:`~lib.volumes.formats.VolumeSource` tile by tile (bounded
memory, whatever the volume's size) into a temporary group that is renamed into place when complete.
Zarr/N5 volumes can instead be *registered* in place, read-only: voxels are read where they are and
only the label arrays live here. zarr-python 2 is the library underneath (see docs/deployment.md, "Where data goes").
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from filelock import FileLock
from numcodecs import Blosc

from ..errors import VolumeError
from ..transforms.intensity import IntensityStats, StatsAccumulator
from .formats import VolumeSource
from .regions import Roi, Shape, grid, zyx

logger = logging.getLogger(__name__)

DEFAULT_CHUNKS: Shape = (32, 128, 128)
# Ingest reads and writes tiles of whole chunks, at most this many voxels in-plane per side.
_TILE_YX = 1024
# Pyramid levels stop once the in-plane size is at most this.
_COARSEST_YX = 256
NGFF_VERSION = "0.4"
LABEL_DTYPE = np.uint32  # wide enough for instance ids


def chunk_compressor() -> Blosc:
    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)


@dataclass(frozen=True)
class StoredImage:
    """What ingest or registration produced; the datastore records it in SQL."""

    uri: str  # the OME-Zarr group (ingested) or the registered Zarr/N5 container
    dataset: str  # the full-resolution array inside ``uri``
    shape: Shape
    dtype: str
    chunks: Shape
    voxel_size: tuple[float, float, float] | None
    levels: list[list[int]]
    stats: IntensityStats
    registered: bool


def chunks_for(shape: Shape, chunks: Shape = DEFAULT_CHUNKS) -> Shape:
    return zyx(max(1, min(s, c)) for s, c in zip(shape, chunks))


def downsample_factors(voxel_size: tuple[float, float, float] | None) -> Shape:
    """2x in-plane; 2x in z too unless z is already at least twice coarser than x (ssTEM, light-sheet)."""
    if voxel_size and voxel_size[0] >= 2 * voxel_size[2]:
        return (1, 2, 2)
    return (2, 2, 2)


def ngff_multiscales(name: str, scales: list[list[float]], unit: str | None) -> list[dict[str, Any]]:
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        for i, scale in enumerate(scales)
    ]
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets}]


def tiles(shape: Shape, chunks: Shape, width: int = _TILE_YX) -> list[Roi]:
    """Chunk-aligned tiles covering ``shape``: one chunk deep, up to ``width`` wide in-plane."""
    tile = (chunks[0], *(max(c, (width // c) * c) for c in chunks[1:]))
    return grid(shape, zyx(tile))


def _mean_pool(array: np.ndarray, factors: Shape) -> np.ndarray:
    """Block means; edge blocks that are cut short average what they have."""
    out_shape = tuple(math.ceil(s / f) for s, f in zip(array.shape, factors))
    padded = tuple(o * f for o, f in zip(out_shape, factors))
    work = np.asarray(array, dtype=np.float32)
    if padded != array.shape:
        work = np.pad(work, [(0, p - s) for p, s in zip(padded, array.shape)], mode="edge")
    view = work.reshape(out_shape[0], factors[0], out_shape[1], factors[1], out_shape[2], factors[2])
    return view.mean(axis=(1, 3, 5))


def create_array(group: zarr.Group, name: str, shape: Shape, chunks: Shape, dtype) -> zarr.Array:
    """An empty chunked array (0 where never written; empty chunks are not stored), as every array here is."""
    return group.create_dataset(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressor=chunk_compressor(),
        write_empty_chunks=False,
        fill_value=0,
        dimension_separator="/",
        overwrite=False,
    )


def pyramid_scales(voxel_size: tuple[float, float, float] | None, levels: list[list[int]]) -> list[list[float]]:
    """Each level's voxel size (µm; 1 per voxel when unknown), for the NGFF scale transforms."""
    base = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    full = levels[0]
    return [[b * f / s for b, f, s in zip(base, full, level)] for level in levels]


def _strided(array: np.ndarray, factors: Shape) -> np.ndarray:
    """Every ``factors``-th voxel: ids stay ids (a mean of labels would invent new ones)."""
    return np.asarray(array[tuple(slice(None, None, f) for f in factors)])


def write_pyramid(group: zarr.Group, level0: zarr.Array, factors: Shape, reduce: str = "mean") -> list[list[int]]:
    """Levels 1, 2, ... of ``level0`` in ``group`` until the plane is at most ``_COARSEST_YX``; returns every
    level's shape. ``reduce``: ``mean`` (intensities, probabilities) or ``stride`` (labels, instance ids).
    Memory stays bounded by one tile whatever the volume's size."""
    levels = [list(level0.shape)]
    previous = level0
    while max(previous.shape[1:]) > _COARSEST_YX and len(levels) < 10:
        shape = zyx(math.ceil(s / f) for s, f in zip(previous.shape, factors))
        array = group.create_dataset(
            str(len(levels)),
            shape=shape,
            chunks=chunks_for(shape, zyx(level0.chunks)),
            dtype=level0.dtype,
            compressor=chunk_compressor(),
            write_empty_chunks=False,
            dimension_separator="/",
            overwrite=True,
        )
        # Output tiles a factor smaller in-plane, so each one reads a tile of the level above of at most
        # the ingest tile's size.
        for roi in tiles(shape, zyx(array.chunks), _TILE_YX // max(factors)):
            source_roi = Roi(
                zyx(o * f for o, f in zip(roi.offset, factors)),
                zyx(min(s * f, p - o * f) for s, o, f, p in zip(roi.shape, roi.offset, factors, previous.shape)),
            )
            if reduce == "stride":
                array[roi.slices] = _strided(previous[source_roi.slices], factors)
                continue
            pooled = _mean_pool(previous[source_roi.slices], factors)
            if np.issubdtype(array.dtype, np.integer):
                pooled = np.rint(pooled)
            array[roi.slices] = pooled.astype(array.dtype)
        levels.append(list(shape))
        previous = array
    return levels


class VolumeStore:
    """OME-Zarr images and their label arrays under ``root``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)

    # --- paths --------------------------------------------------------------------------------
    def group_path(self, image_id: str) -> str:
        return os.path.join(self.root, f"{image_id}.ome.zarr")

    def _lock(self, image_id: str) -> FileLock:
        return FileLock(os.path.join(self.root, f".{image_id}.lock"))

    # --- writing images ------------------------------------------------------------------------
    def ingest(
        self,
        source: VolumeSource,
        image_id: str,
        chunks: Shape | None = None,
    ) -> StoredImage:
        """Stream ``source`` into ``<root>/<image_id>.ome.zarr`` with a pyramid; returns what was stored.

        Memory is bounded by one tile (a chunk deep, ``_TILE_YX`` squared) whatever the volume size.
        The group appears complete or not at all.
        """
        final = self.group_path(image_id)
        if os.path.exists(final):
            raise FileExistsError(f"{final} exists")
        tmp = os.path.join(self.root, f".ingest-{image_id}-{uuid.uuid4().hex[:8]}.ome.zarr")
        shape = source.shape
        chunks = chunks_for(shape, chunks or DEFAULT_CHUNKS)
        try:
            group = zarr.open_group(zarr.DirectoryStore(tmp, dimension_separator="/"), mode="w")
            level0 = group.create_dataset(
                "0",
                shape=shape,
                chunks=chunks,
                dtype=source.dtype,
                compressor=chunk_compressor(),
                write_empty_chunks=False,
                dimension_separator="/",
            )
            accumulator = StatsAccumulator(shape)
            finite = not np.issubdtype(source.dtype, np.floating)
            for roi in tiles(shape, chunks):
                tile = source.read(roi.slices)
                level0[roi.slices] = tile
                accumulator.add(tile, roi.offset)
                finite = finite or bool(np.isfinite(tile).any())
            if not finite:
                raise VolumeError(f"'{source.name}' contains no finite values (all NaN or infinite)")
            levels = write_pyramid(group, level0, downsample_factors(source.voxel_size))
            stats = accumulator.stats()
            scales = pyramid_scales(source.voxel_size, levels)
            group.attrs.put(
                {
                    "multiscales": ngff_multiscales(image_id, scales, "micrometer" if source.voxel_size else None),
                    "axonseg": {
                        "voxel_size_known": source.voxel_size is not None,
                        "intensity": stats.to_json(),
                        "source": {"format": source.source_format, "dataset": source.dataset},
                    },
                }
            )
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoredImage(
            final, "0", shape, str(np.dtype(source.dtype)), chunks, source.voxel_size, levels, stats, False
        )

    def register(self, source: VolumeSource, image_id: str, stats: IntensityStats, chunks: Shape) -> StoredImage:
        """Use a Zarr/N5 array where it is (read-only); only an empty label group is created here, whose
        arrays will have ``chunks``."""
        os.makedirs(self.group_path(image_id), exist_ok=True)
        group = zarr.open_group(zarr.DirectoryStore(self.group_path(image_id), dimension_separator="/"), mode="a")
        group.attrs.put({"axonseg": {"registered": source.path, "dataset": source.dataset}})
        return StoredImage(
            source.path,
            source.dataset or "",
            source.shape,
            str(np.dtype(source.dtype)),
            chunks,
            source.voxel_size,
            [list(source.shape)],
            stats,
            True,
        )

    def remove(self, image_id: str) -> None:
        shutil.rmtree(self.group_path(image_id), ignore_errors=True)
        try:
            os.remove(os.path.join(self.root, f".{image_id}.lock"))
        except OSError:
            pass

    # --- reading images ------------------------------------------------------------------------
    def image_array(self, image_id: str, level: int = 0) -> zarr.Array:
        """An ingested image's array at ``level`` (0 = full resolution)."""
        return zarr.open_array(
            zarr.DirectoryStore(os.path.join(self.group_path(image_id), str(level)), dimension_separator="/"),
            mode="r",
        )

    # --- labels --------------------------------------------------------------------------------
    def _label_path(self, image_id: str, name: str) -> str:
        return os.path.join(self.group_path(image_id), "labels", name)

    def has_label(self, image_id: str, name: str) -> bool:
        return os.path.exists(os.path.join(self._label_path(image_id, name), "0", ".zarray"))

    def label_array(
        self, image_id: str, name: str, shape: Shape, chunks: Shape, scale: list[float] | None = None
    ) -> zarr.Array:
        """The label array ``name`` of an image, created (all 0) on first use with the image's voxel size."""
        path = os.path.join(self._label_path(image_id, name), "0")
        if not os.path.exists(os.path.join(path, ".zarray")):
            with self._lock(image_id):
                if not os.path.exists(os.path.join(path, ".zarray")):
                    self._create_label(image_id, name, shape, chunks, scale)
        return zarr.open_array(zarr.DirectoryStore(path, dimension_separator="/"), mode="r+")

    def _create_label(self, image_id: str, name: str, shape: Shape, chunks: Shape, scale: list[float] | None) -> None:
        labels = zarr.open_group(
            zarr.DirectoryStore(os.path.join(self.group_path(image_id), "labels"), dimension_separator="/"), mode="a"
        )
        group = labels.require_group(name)
        create_array(group, "0", shape, chunks, LABEL_DTYPE)
        group.attrs.put(
            {
                "multiscales": ngff_multiscales(
                    name, [list(scale or (1.0, 1.0, 1.0))], "micrometer" if scale else None
                ),
                "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
            }
        )
        labels.attrs["labels"] = sorted({*labels.attrs.get("labels", []), name})

    def read_label(self, image_id: str, name: str, roi: Roi) -> np.ndarray | None:
        if not self.has_label(image_id, name):
            return None
        path = os.path.join(self._label_path(image_id, name), "0")
        return zarr.open_array(zarr.DirectoryStore(path, dimension_separator="/"), mode="r")[roi.slices]

    def write_label(
        self,
        image_id: str,
        name: str,
        roi: Roi,
        array: np.ndarray,
        shape: Shape,
        chunks: Shape,
        scale: list[float] | None = None,
    ) -> None:
        """Write ``array`` at ``roi``; only the chunks inside ``roi`` are rewritten."""
        self.label_array(image_id, name, shape, chunks, scale)[roi.slices] = np.asarray(array, dtype=LABEL_DTYPE)
