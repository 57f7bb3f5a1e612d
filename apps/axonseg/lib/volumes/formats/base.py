"""The region-reading contract every format implements, and the checks all formats share.

:meth:`VolumeSource.read` returns one (z, y, x) region and reads only what that region needs. A source is
checked when it is opened, **without reading voxel data**: one 3D single-channel array (after dropping size-1
axes), not empty, integer/float/bool voxels; chunked data in chunks neither too large nor too small to read
regions from. Formats that cannot be streamed (:class:`WholeImageSource`) are read whole once, on the first read.

Arrays are (z, y, x); voxel sizes and origins are (z, y, x) in micrometres, ``None`` voxel size where the file
does not say. Errors are :class:`~lib.errors.VolumeError` (HTTP 422) naming the file by its base name, or
:class:`~lib.errors.UploadTooLarge` (413).
"""

from __future__ import annotations

import math
import operator
import os
import threading
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from ...errors import UploadTooLarge, VolumeError
from ..regions import zyx
from .safety import check_path, display_name, scrub, too_large

Slices = tuple[slice, slice, slice]  # (z, y, x), plain slices with explicit start/stop, step None

# Extension → format name. Order matters: ".nii.gz" must match before ".gz" style suffixes.
FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".tiff": "tiff",
    ".tif": "tiff",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".zarr": "zarr",
    ".n5": "n5",
}

# Dataset names tried, in order, when an HDF5/Zarr/N5 container is given without a dataset path.
DEFAULT_DATASETS = ("raw", "volumes/raw", "data", "image", "volume", "s0", "0")


# A chunk (HDF5/Zarr/N5) is decoded whole to read any voxel of it: bigger ones are refused, so that a
# small region read cannot be made to allocate gigabytes.
MAX_CHUNK_BYTES = 512 * 1024**2
# Every chunk read costs HDF5 about a kilobyte and zarr a file lookup: an array of more than MANY_CHUNKS chunks
# must have chunks of at least MIN_CHUNK_VOXELS (1-voxel chunks would take gigabytes and minutes per region).
MANY_CHUNKS = 65_536
MIN_CHUNK_VOXELS = 4096


def volume_extension(path: str | os.PathLike) -> str:
    """The recognised extension of ``path`` (``.nii.gz`` counts as one)."""
    name = str(path).lower().rstrip("/")
    for ext in FORMATS:
        if name.endswith(ext):
            return ext
    return ""


def volume_format(path: str | os.PathLike) -> str:
    """Format name for a path, from its extension (a folder of PNGs is ``png_stack``)."""
    ext = volume_extension(path)
    if ext:
        return FORMATS[ext]
    if os.path.isdir(path) and any(p.lower().endswith(".png") for p in os.listdir(path)):
        return "png_stack"
    raise VolumeError(
        f"unsupported file type '{display_name(path)}'; expected one of: "
        + ", ".join(FORMATS)
        + " or a folder of PNG slices"
    )


def full_roi(shape: Sequence[int]) -> Slices:
    """The roi covering a whole volume of ``shape``."""
    z, y, x = (slice(0, int(s)) for s in shape)
    return (z, y, x)


def _kept_axes(shape: Sequence[int], name: str, axes: str | None = None) -> tuple[int, int, int]:
    """The three native axes kept as (z, y, x): size-1 axes are dropped (named non-spatial axes first,
    then leading, then trailing ones) until three remain."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or 0 in shape:
        raise VolumeError(f"{name} is empty (shape {shape})")
    if min(shape) < 0:  # a damaged header (Zarr/N5 metadata are not checked by zarr)
        raise VolumeError(f"{name} declares a negative size (shape {shape})")
    keep = list(range(len(shape)))
    if len(shape) > 3:
        order = [i for i, a in enumerate(axes) if a not in "ZYX"] if axes else []
        order += list(range(len(shape)))
        for i in order:
            if len(keep) == 3:
                break
            if i in keep and shape[i] == 1:
                keep.remove(i)
    if len(keep) != 3:
        raise VolumeError(
            f"{name} has {len(shape)} dimensions (shape {shape}); axonseg needs a single-channel 3D volume (z, y, x)"
        )
    z, y, x = keep
    return (z, y, x)


def check_dtype(dtype: Any, name: str) -> np.dtype:
    """The dtype ``read`` returns (native byte order; bool as uint8); refuses anything but numbers."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "iuf" and dtype.fields is None and dtype.subdtype is None:
        return dtype.newbyteorder("=")
    raise VolumeError(f"{name} has data type {dtype}; expected integer or float intensities")


def _check_slices(roi: Sequence[slice], shape: tuple[int, int, int]) -> Slices:
    if len(roi) != 3:
        raise ValueError(f"roi must be three slices (z, y, x), got {roi!r}")
    out = []
    for s, size, axis in zip(roi, shape, "zyx"):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"roi {axis}: expected a slice with step 1, got {s!r}")
        start = 0 if s.start is None else operator.index(s.start)
        stop = size if s.stop is None else operator.index(s.stop)
        if not 0 <= start <= stop <= size:
            raise ValueError(f"roi {axis} {start}:{stop} is outside the volume (size {size})")
        out.append(slice(start, stop))
    z, y, x = out
    return (z, y, x)


def pick_dataset(names: Sequence[str], dataset: str | None, name: str, links: Collection[str] = ()) -> str:
    """The same selection rules for HDF5, Zarr and N5: the named one, a default name, or the only one."""
    if dataset:
        wanted = dataset.strip("/")
        if wanted in names:
            return wanted
        parts = wanted.split("/")
        through = next(("/".join(parts[:i]) for i in range(1, len(parts) + 1) if "/".join(parts[:i]) in links), None)
        if through is not None:
            raise VolumeError(
                f"dataset '{dataset}' in '{name}' is reached through the link '{through}'; "
                "links are not followed, give the dataset's own path"
            )
        raise VolumeError(f"dataset '{dataset}' not found in '{name}'; it has: {list(names)}")
    for candidate in DEFAULT_DATASETS:
        if candidate in names:
            return candidate
    if len(names) == 1:
        return names[0]
    if not names:
        raise VolumeError(f"'{name}' holds no image dataset")
    raise VolumeError(f"'{name}' holds several datasets {list(names)}; say which one to read")


class VolumeSource:
    """One 3D volume in a file, opened lazily; :meth:`read` returns a (z, y, x) region of it.

    Attributes:
        path: the file or folder.
        source_format: ``tiff``, ``hdf5``, ``zarr``, ``n5``, ``nrrd``, ``nifti`` or ``png_stack``.
        dataset: the dataset path inside an HDF5/Zarr/N5 container (``""`` for a Zarr/N5 array at the
            container's root), else None.
        shape: (z, y, x) after dropping size-1 axes.
        dtype: the voxel type ``read`` returns (bool is reported, and returned, as uint8).
        voxel_size: (z, y, x) micrometres, None when the file does not say.
        origin: (z, y, x) micrometres; (0, 0, 0) unless the format stores one (NRRD/NIfTI).
        direction: ITK direction cosines (x, y, z order) for NRRD/NIfTI; None is identity.
        chunks: the native chunk shape (z, y, x) of HDF5/Zarr/N5 chunked data, else None.
    """

    source_format = ""

    def __init__(
        self,
        path: str | os.PathLike,
        dataset: str | None = None,
        *,
        root: str | None = None,
        max_voxels_in_memory: int | None = None,
    ):
        self.path = os.fspath(path)
        self.name = display_name(self.path)
        self.dataset: str | None = None
        self.shape: tuple[int, int, int] = (0, 0, 0)
        self.dtype: np.dtype = np.dtype(np.uint8)
        self.voxel_size: tuple[float, float, float] | None = None
        self.origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.direction: np.ndarray | None = None
        self.chunks: tuple[int, int, int] | None = None
        self._root = root
        self._max_voxels = max_voxels_in_memory
        self._closed = False
        self._lock = threading.RLock()
        check_path(self.path)
        try:
            self._open(dataset)
        except BaseException as e:
            self.close()
            if isinstance(e, (VolumeError, UploadTooLarge, MemoryError)) or not isinstance(e, Exception):
                raise
            raise VolumeError(
                f"cannot read {self.source_format} file '{self.name}': {scrub(str(e) or type(e).__name__, self.path)}"
            ) from e

    # Subclasses set shape, dtype, ... in _open and return the native array region in _read.
    def _open(self, dataset: str | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, roi: Slices) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, roi: Slices) -> np.ndarray:
        """The voxels of ``roi`` ((z, y, x) slices in this source's 3D space) as a new array."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        roi = _check_slices(roi, self.shape)
        shape = tuple(s.stop - s.start for s in roi)
        if 0 in shape:
            return np.zeros(shape, self.dtype)
        try:
            out = np.asarray(self._read(roi))
        except (VolumeError, UploadTooLarge, MemoryError):
            raise
        except Exception as e:
            raise VolumeError(
                f"cannot read {self.source_format} file '{self.name}': {scrub(str(e) or type(e).__name__, self.path)}"
            ) from e
        if out.shape != shape:
            raise VolumeError(
                f"cannot read {self.source_format} file '{self.name}': got {out.shape} for a {shape} region"
            )
        return np.ascontiguousarray(out, dtype=self.dtype)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> VolumeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' {self.shape} {self.dtype}>"

    # helpers for subclasses
    def _set_axes(self, native_shape: Sequence[int], axes: str | None = None) -> None:
        self._native_shape = tuple(int(s) for s in native_shape)
        self._keep = _kept_axes(self._native_shape, self.name, axes)
        self.shape = zyx(self._native_shape[i] for i in self._keep)

    def _native_index(self, roi: Slices) -> tuple:
        """``roi`` as an index into the native array: dropped size-1 axes are indexed with 0."""
        index: list[Any] = [0] * len(self._native_shape)
        for axis, s in zip(self._keep, roi):
            index[axis] = s
        return tuple(index)

    def _set_chunks(self, native_chunks: Sequence[int] | None, itemsize: int) -> None:
        if not native_chunks:
            return
        native_chunks = tuple(int(c) for c in native_chunks)
        if len(native_chunks) != len(self._native_shape) or min(native_chunks) <= 0:
            raise VolumeError(
                f"'{self.name}' declares chunks of {native_chunks} for an array of {self._native_shape}; "
                "a chunk needs a positive size along every axis"
            )
        nbytes = math.prod(native_chunks) * itemsize
        if nbytes > MAX_CHUNK_BYTES:
            raise VolumeError(
                f"'{self.name}' is stored in chunks of {native_chunks} ({nbytes / 1024**2:,.0f} MiB each), too large "
                f"to read regions from (at most {MAX_CHUNK_BYTES // 1024**2} MiB); re-save it with smaller chunks"
            )
        count = math.prod(-(-s // c) for s, c in zip(self._native_shape, native_chunks))
        voxels = math.prod(min(s, c) for s, c in zip(self._native_shape, native_chunks))
        if count > MANY_CHUNKS and voxels < MIN_CHUNK_VOXELS:
            raise VolumeError(
                f"'{self.name}' is stored in {count:,} chunks of {native_chunks} ({voxels:,} voxels each), too small "
                f"to read regions from (at least {MIN_CHUNK_VOXELS:,} voxels); re-save it with larger chunks"
            )
        self.chunks = zyx(native_chunks[i] for i in self._keep)


class WholeImageSource(VolumeSource):
    """Formats read whole on the first ``read`` (then regions are sliced from memory)."""

    _array: np.ndarray | None = None

    def _check_memory(self, streamable: bool = False) -> None:
        if self._max_voxels is not None and math.prod(self.shape) > self._max_voxels:
            raise too_large(self.name, self.shape, self._max_voxels, streamable)

    def _load(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, roi: Slices) -> np.ndarray:
        with self._lock:
            array = self._array
            if array is None:
                array = self._load()
                if array.shape != self._native_shape:
                    raise VolumeError(f"'{self.name}' holds {array.shape} voxels, its header says {self._native_shape}")
            whole = all(s.start == 0 and s.stop == n for s, n in zip(roi, self.shape))
            # A read of everything hands the array over instead of keeping a second copy.
            self._array = None if whole else array
        region = array[self._native_index(roi)]
        return region if whole else region.copy()

    def close(self) -> None:
        self._array = None
        super().close()
