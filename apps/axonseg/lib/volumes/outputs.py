"""Where a whole-volume job writes: one OME-Zarr folder per job, beside the image's store.

    <folder>/output.ome.zarr/probabilities/{0,1,...}   uint8, p x 255 (mean pyramid)
    <folder>/output.ome.zarr/labels/{0,1,...}          uint8, the structure's mask (strided pyramid)
    <folder>/output.ome.zarr/instances/{0,1,...}       uint64 object ids, the same through the volume
    <folder>/work/blocks/{0,...}                       uint64 block labels (deleted when the job is done)
    <folder>/work/tables/<index>.npz, mapping/         what blocks tell the coordinator, its answer

Every array has the image's full shape (so viewers overlay it on the image) and the job's chunks; a
write block is a whole number of chunks, so no two blocks write the same chunk file.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import zarr

from .regions import Roi, Shape
from .store import create_array, ngff_multiscales, pyramid_scales, write_pyramid

OUTPUTS = {"probabilities": np.uint8, "labels": np.uint8, "instances": np.uint64}
# How each output is downsampled for the pyramid.
REDUCE = {"probabilities": "mean", "labels": "stride", "instances": "stride"}
_BLOCKS = "blocks"


class VolumeOutput:
    """The arrays of one job (created by :meth:`create`, opened by workers by folder)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.zarr_path = os.path.join(folder, "output.ome.zarr")
        self.work = os.path.join(folder, "work")
        self.tables = os.path.join(self.work, "tables")
        self.mapping = os.path.join(self.work, "mapping")

    def create(self, shape: Shape, chunks: Shape, voxel_size_um: tuple[float, float, float] | None) -> None:
        """Create the empty arrays (idempotent: a resumed job keeps what its blocks wrote)."""
        for folder in (self.tables, self.mapping):
            os.makedirs(folder, exist_ok=True)
        group = zarr.open_group(self._store(self.zarr_path), mode="a")
        scale = pyramid_scales(voxel_size_um, [list(shape)])[0]
        for name, dtype in OUTPUTS.items():
            self._require(group.require_group(name), shape, chunks, dtype)
            group[name].attrs.setdefault(
                "multiscales", ngff_multiscales(name, [scale], "micrometer" if voxel_size_um else None)
            )
        self._require(zarr.open_group(self._store(self.work), mode="a"), shape, chunks, np.uint64, _BLOCKS)

    @staticmethod
    def _store(path: str) -> zarr.DirectoryStore:
        return zarr.DirectoryStore(path, dimension_separator="/")

    @staticmethod
    def _require(group: zarr.Group, shape: Shape, chunks: Shape, dtype, name: str = "0") -> None:
        if name not in group:
            create_array(group, name, shape, chunks, dtype)

    def array(self, name: str, level: int = 0, mode: str = "r") -> zarr.Array:
        if name == _BLOCKS:
            return zarr.open_array(self._store(os.path.join(self.work, _BLOCKS)), mode=mode)
        return zarr.open_array(self._store(os.path.join(self.zarr_path, name, str(level))), mode=mode)

    def write(self, roi: Roi, arrays: dict[str, np.ndarray]) -> str:
        """Write each array of ``arrays`` (output name or ``blocks``) at ``roi``; returns their checksum."""
        digest = hashlib.sha256()
        for name, array in sorted(arrays.items()):
            dtype = np.uint64 if name == _BLOCKS else OUTPUTS[name]
            data = np.ascontiguousarray(array, dtype=dtype)
            self.array(name, mode="r+")[roi.slices] = data
            digest.update(name.encode())
            digest.update(data.tobytes())
        return digest.hexdigest()

    def table_path(self, index: int) -> str:
        return os.path.join(self.tables, f"{index}.npz")

    def build_pyramid(self, name: str, factors: Shape, voxel_size_um: tuple[float, float, float] | None) -> list:
        """Downsampled levels of output ``name`` and its NGFF metadata; returns the level shapes."""
        group = zarr.open_group(self._store(os.path.join(self.zarr_path, name)), mode="a")
        levels = write_pyramid(group, group["0"], factors, REDUCE[name])
        scales = pyramid_scales(voxel_size_um, levels)
        group.attrs["multiscales"] = ngff_multiscales(name, scales, "micrometer" if voxel_size_um else None)
        return levels

    def drop_work(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
