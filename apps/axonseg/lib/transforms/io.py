"""Microscopy volume IO: one reader and one writer for every format axonseg accepts.

Arrays are always (z, y, x), spacing and origin are (z, y, x) in micrometres. Formats that
store x first (ITK, N5) are converted at this boundary and nowhere else.

Reading goes through :mod:`lib.volumes.formats` (region-readable, untrusting readers);
:func:`read_volume` reads a whole volume through it. The format constants (``FORMATS``, units) live there.

Readers raise :class:`VolumeError` with a message meant for a person; the server turns it into
a 4xx reply.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import UploadTooLarge, VolumeError
from ..volumes.formats import full_roi, open_source, volume_extension, volume_format

__all__ = [
    "Volume",
    "copy_atomic",
    "read_volume",
    "remove_path",
    "same_geometry",
    "validate",
    "write_volume",
]


@dataclass
class Volume:
    """A 3D image with its physical geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # ITK direction cosines (x, y, z order, as NRRD/NIfTI store them); None means identity.
    direction: np.ndarray | None = None
    source_format: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = (int(s) for s in self.array.shape)
        return (z, y, x)


def validate(array: np.ndarray, name: str = "volume") -> np.ndarray:
    """Check that ``array`` is a usable 3D intensity volume and return it squeezed to 3D."""
    if array.size == 0:
        raise VolumeError(f"{name} is empty (shape {tuple(array.shape)})")
    squeezed = array
    while squeezed.ndim > 3 and squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    if squeezed.ndim != 3:
        raise VolumeError(
            f"{name} has {array.ndim} dimensions (shape {tuple(array.shape)}); "
            "axonseg needs a single-channel 3D volume (z, y, x)"
        )
    if squeezed.dtype == bool:
        squeezed = squeezed.astype(np.uint8)
    if not (np.issubdtype(squeezed.dtype, np.integer) or np.issubdtype(squeezed.dtype, np.floating)):
        raise VolumeError(f"{name} has data type {squeezed.dtype}; expected integer or float intensities")
    if np.issubdtype(squeezed.dtype, np.floating) and not np.isfinite(squeezed).any():
        raise VolumeError(f"{name} contains no finite values (all NaN or infinite)")
    return squeezed


def read_volume(path: str | os.PathLike, dataset: str | None = None, max_voxels_in_memory: int | None = None) -> Volume:
    """Read any supported format whole into a :class:`Volume`.

    Args:
        path: file or folder (Zarr, N5, PNG stack).
        dataset: dataset inside an HDF5/Zarr/N5 container; found automatically when omitted.
        max_voxels_in_memory: refuse (:class:`UploadTooLarge`) a bigger volume before reading it.

    ``spacing`` is (1, 1, 1) when the file does not state a voxel size; ``meta["voxel_size_known"]``
    says which, and ``meta["dataset"]`` is the dataset read from a container.
    """
    name = os.path.basename(str(path).rstrip("/"))
    with open_source(path, dataset, max_voxels_in_memory=max_voxels_in_memory) as source:
        if max_voxels_in_memory is not None and math.prod(source.shape) > max_voxels_in_memory:
            dims = "x".join(str(s) for s in source.shape)
            raise UploadTooLarge(
                f"'{name}' has {math.prod(source.shape):,} voxels ({dims}), more than the "
                f"{max_voxels_in_memory:,} this server reads into memory at once"
            )
        array = source.read(full_roi(source.shape))
        meta: dict = {"voxel_size_known": source.voxel_size is not None}
        if source.dataset is not None:
            meta["dataset"] = source.dataset
        volume = Volume(
            validate(array, name),
            source.voxel_size or (1.0, 1.0, 1.0),
            source.origin,
            source.direction,
            source.source_format,
            meta,
        )
    return volume


# --- writing ------------------------------------------------------------------------------------


def write_volume(path: str | os.PathLike, volume: Volume, dataset: str = "raw", compress: bool = True) -> str:
    """Write ``volume`` in the format given by the extension of ``path``; returns ``path``. ``compress``:
    off writes raw NRRD/NIfTI, for readers without gzip (OHIF's nrrd.js).

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    path = str(path)
    fmt = volume_format(path)
    ext = volume_extension(path)
    tmp = re.sub(re.escape(ext) + "$", f".part{_writer_tag()}{ext}", path, flags=re.IGNORECASE)
    try:
        _WRITERS[fmt](tmp, volume, dataset, compress)
        if os.path.isdir(path):  # Zarr/N5 are folders: os.replace cannot overwrite a non-empty one
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)
    return path


def _writer_tag() -> str:
    """Unique per process and thread: concurrent writers of one file each use their own temporary."""
    return f"{os.getpid()}-{threading.get_ident()}"


def remove_path(path: str) -> None:
    """Remove a file or a folder (Zarr/N5) if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def copy_atomic(source: str, dest: str) -> None:
    """Copy a file or folder so that ``dest`` appears complete or not at all."""
    tmp = f"{dest}.part{_writer_tag()}"
    remove_path(tmp)
    try:
        if os.path.isdir(source):
            shutil.copytree(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        if os.path.isdir(dest):  # os.replace overwrites files atomically, but not folders
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        remove_path(tmp)


def warm_up() -> None:
    """Load ITK's lazily imported NRRD writer now (about 2 s), so the first crop a client downloads
    does not pay for it."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_volume(os.path.join(folder, "warm.nrrd"), Volume(np.zeros((1, 1, 1), np.uint8)))


# ITK's Python wrapping writes no int8, float16 or 64-bit integer images: those are written as the next wider
# type it writes (64-bit integers as float64, exact up to 2**53).
_ITK_WIDER = {"i1": np.int16, "f2": np.float32, "i8": np.float64, "u8": np.float64}


def _write_itk(path: str, volume: Volume, dataset: str, compress: bool = True) -> None:
    import itk

    array = np.ascontiguousarray(volume.array)
    array = array.astype(_ITK_WIDER.get(array.dtype.str[1:], array.dtype), copy=False)
    image = itk.image_from_array(array)
    if tuple(image.GetLargestPossibleRegion().GetSize()) != array.shape[::-1]:
        # ITK takes an array whose only axis longer than 1 is z (C- and Fortran-contiguous at once) as x first:
        # fill an image of the right size instead.
        image = type(image).New()
        image.SetRegions([int(s) for s in array.shape[::-1]])
        image.Allocate()
        itk.array_view_from_image(image)[...] = array
    image.SetSpacing([float(s) for s in reversed(volume.spacing)])
    image.SetOrigin([float(o) for o in reversed(volume.origin)])
    if volume.direction is not None:
        image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.direction, dtype=float)))
    itk.imwrite(image, path, compression=compress)


def _write_tiff(path: str, volume: Volume, dataset: str, compress: bool = True) -> None:
    import tifffile

    z, y, x = volume.spacing
    tifffile.imwrite(
        path,
        volume.array,
        imagej=True,
        resolution=(1.0 / x, 1.0 / y),
        metadata={"spacing": z, "unit": "um", "axes": "ZYX"},
    )


def _write_hdf5(path: str, volume: Volume, dataset: str, compress: bool = True) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        ds = f.create_dataset(dataset, data=volume.array, compression="gzip" if compress else None)
        ds.attrs["element_size_um"] = list(volume.spacing)


def _write_zarr(path: str, volume: Volume, dataset: str, compress: bool = True, n5: bool = False) -> None:
    import zarr

    store = zarr.N5Store(path) if n5 else zarr.DirectoryStore(path)
    root = zarr.group(store=store, overwrite=True)
    array = root.create_dataset(dataset, data=volume.array, chunks=True)
    if n5:
        array.attrs["pixelResolution"] = {
            "dimensions": list(volume.spacing[::-1]),
            "unit": "um",
        }
    else:
        array.attrs["element_size_um"] = list(volume.spacing)


def _write_n5(path: str, volume: Volume, dataset: str, compress: bool = True) -> None:
    _write_zarr(path, volume, dataset, n5=True)


_WRITERS = {
    "tiff": _write_tiff,
    "hdf5": _write_hdf5,
    "zarr": _write_zarr,
    "n5": _write_n5,
    "nrrd": _write_itk,
    "nifti": _write_itk,
}


def same_geometry(a: Volume, b: Volume, rtol: float = 1e-5) -> bool:
    """True when two volumes share shape, spacing, origin and direction."""
    identity = np.eye(3)
    return (
        a.shape == b.shape
        and np.allclose(a.spacing, b.spacing, rtol=rtol)
        and np.allclose(a.origin, b.origin, rtol=rtol, atol=1e-6)
        and np.allclose(
            identity if a.direction is None else a.direction,
            identity if b.direction is None else b.direction,
        )
    )
