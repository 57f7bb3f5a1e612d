"""Region-readable, untrusting readers for every volume format axonseg accepts.

:func:`open_source` opens a file or folder lazily and checks it **without reading voxel data**: one
3D single-channel array (after dropping size-1 axes), not empty, integer/float/bool voxels, and
nothing in it that would make the server read bytes from outside the upload:

- HDF5: no external links anywhere in the file, no soft links to paths that do not exist in it (soft
  links to objects inside the file are tolerated but never listed or followed when choosing a
  dataset), and the chosen dataset has neither external raw storage nor a virtual (VDS) layout.
- Zarr / N5 folders: the folder is inside ``root`` and no entry in it is a symbolic link resolving
  outside it (checked once when opening, by a cheap ``lstat`` walk, and again for every chunk file
  read); only standard numcodecs compressors and filters are decoded (``pickle`` would run code).
- TIFF: OME-TIFF series referring to other files are refused, and tifffile's multi-file readers
  (OME, Micro-Manager MMStack, NDTiff) are switched off so that it never opens a sibling file.
- NRRD: detached data (``data file:``) is refused; NIfTI: only single-file ``n+1``/``n+2`` images.
- PNG stacks: the same symbolic link rule as Zarr.
- Compressed chunks (HDF5 gzip; Zarr/N5 gzip, zlib, bz2, lzma, blosc, lz4, zstd) may not decode to more
  than a chunk's bytes: a decompression bomb is refused before it is inflated (HDF5's LZF is not checked).

:meth:`VolumeSource.read` returns one (z, y, x) region and reads only what that region needs: TIFF by
memory-mapping contiguous uncompressed data or decoding just the strips/tiles of the pages in the
region, HDF5 and Zarr/N5 by slicing (whole chunks at most), PNG stacks by opening only the slices
in the region. NRRD and NIfTI cannot be streamed reliably: the header is read first (by this module, before ITK
sees the file: a few kB of gzip or bzip2 can declare gigavoxels), the voxel count it declares, components
included, checked against ``max_voxels_in_memory``, and the whole image is read once on the first ``read``.
A path holding NUL or another control character is refused before anything is opened.

Arrays are (z, y, x); voxel sizes and origins are (z, y, x) in micrometres, ``None`` voxel size where
the file does not say. Errors are :class:`~lib.errors.VolumeError` (HTTP 422) naming the file by its
base name, or :class:`~lib.errors.UploadTooLarge` (413).

This module holds the shared format constants (:data:`FORMATS`, :data:`DEFAULT_DATASETS`, the unit
table); ``lib.transforms.io`` re-exports them and builds ``read_volume`` on :func:`open_source`.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import math
import mmap
import operator
import os
import re
import struct
import threading
import warnings
import xml.etree.ElementTree as ElementTree
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UploadTooLarge, VolumeError

Roi = tuple[slice, slice, slice]  # (z, y, x), plain slices with explicit start/stop, step None

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

# Length unit name (lower case) → micrometres.
UNIT_TO_UM: dict[str, float] = {
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nanometers": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,  # ImageJ escapes the micro sign in TIFF descriptions
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micrometers": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
    "angstrom": 1e-4,
    "å": 1e-4,
}

# A chunk (HDF5/Zarr/N5) is decoded whole to read any voxel of it: bigger ones are refused, so that a
# small region read cannot be made to allocate gigabytes.
MAX_CHUNK_BYTES = 512 * 1024**2
# Every chunk read costs HDF5 about a kilobyte and zarr a file lookup: an array of more than MANY_CHUNKS chunks
# must have chunks of at least MIN_CHUNK_VOXELS (1-voxel chunks would take gigabytes and minutes per region).
MANY_CHUNKS = 65_536
MIN_CHUNK_VOXELS = 4096
# An HDF5 file with more objects than this is refused rather than walked.
MAX_HDF5_OBJECTS = 100_000
# Zarr/N5 groups nested deeper than this, or holding more arrays, are refused rather than listed.
MAX_ZARR_DEPTH = 32
MAX_ZARR_ARRAYS = 10_000

# numcodecs codecs that only transform bytes/numbers (``pickle`` and friends can run code or build objects).
_SAFE_CODECS = frozenset(
    {
        "blosc",
        "zstd",
        "zlib",
        "gzip",
        "bz2",
        "lzma",
        "lz4",
        "delta",
        "fixedscaleoffset",
        "quantize",
        "astype",
        "packbits",
        "shuffle",
        "bitround",
        "crc32",
        "crc32c",
        "adler32",
        "fletcher32",
        "jenkins_lookup3",
    }
)


# --- format names and units -------------------------------------------------------------------


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
        f"unsupported file type '{_display_name(path)}'; expected one of: "
        + ", ".join(FORMATS)
        + " or a folder of PNG slices"
    )


def unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit``; None for a missing or unknown unit (``pixel``, ``none``, ...)."""
    if not isinstance(unit, str):
        return None
    return UNIT_TO_UM.get(unit.strip().lower())


def to_um(value: float, unit: str | None) -> float:
    """``value`` in ``unit`` as micrometres; a missing or unknown unit leaves the value as it is."""
    factor = unit_factor(unit) if unit else None
    return float(value) * factor if factor else float(value)


def full_roi(shape: Sequence[int]) -> Roi:
    """The roi covering a whole volume of ``shape``."""
    return tuple(slice(0, int(s)) for s in shape)  # type: ignore[return-value]


# --- helpers ----------------------------------------------------------------------------------


def _display_name(path: str | os.PathLike) -> str:
    return os.path.basename(str(path).rstrip("/")) or str(path)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_path(path: str) -> None:
    """Refuse a path holding NUL or another control character: the OS rejects NUL with a bare ValueError, and
    a newline could forge a line in the log or a message. The name is shown escaped."""
    text = os.fsdecode(path)
    if _CONTROL.search(text):
        shown = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), _display_name(text))
        raise VolumeError(f"the file name '{shown}' contains a NUL or control character; rename the file")


def _scrub(message: str, path: str) -> str:
    """A library's error message without the server's folder names (nor ITK's source locations)."""
    if "itk::ERROR" in message or "ITK ERROR" in message:  # the spelling differs between ITK versions
        lines = [
            re.sub(r"^(itk::ERROR|ITK ERROR): \w+\(0x[0-9a-f]+\): ", "", line.strip())
            for line in message.splitlines()
            if line.strip() and not re.search(r"\.(cxx|h|hxx):\d+:$", line.strip())
        ]
        # Teem (NRRD) chains "[nrrd] function: trouble" lines down to the cause: keep only that one.
        chain = [re.sub(r"^\[\w+\] \w+: ?", "", line) for line in lines if line.startswith("[")]
        message = " ".join([line for line in lines if not line.startswith("[")] + chain[-1:])
    for p in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        message = message.replace(p, _display_name(p))
    for d in {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}:
        if d and d != os.sep:
            message = message.replace(d + os.sep, "")
    return message if len(message) <= 400 else message[:400] + "..."


def _inside(path: str, folder: str) -> bool:
    """Both real paths: is ``path`` ``folder`` or inside it?"""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


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
    return tuple(keep)  # type: ignore[return-value]


def _check_dtype(dtype: Any, name: str) -> np.dtype:
    """The dtype ``read`` returns (native byte order; bool as uint8); refuses anything but numbers."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "iuf" and dtype.fields is None and dtype.subdtype is None:
        return dtype.newbyteorder("=")
    raise VolumeError(f"{name} has data type {dtype}; expected integer or float intensities")


# Voxel sizes (µm) outside this range are damage, not microscopy (and ITK squares them: 1e-200 becomes 0).
_VOXEL_SIZE_RANGE = (1e-6, 1e9)


def _valid_size(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    """A (z, y, x) voxel size if all three are within :data:`_VOXEL_SIZE_RANGE` (so finite and positive)."""
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    low, high = _VOXEL_SIZE_RANGE
    if len(out) != 3 or not all(low <= v <= high for v in out):
        return None
    return out  # type: ignore[return-value]


def _check_roi(roi: Sequence[slice], shape: tuple[int, int, int]) -> Roi:
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
    return tuple(out)  # type: ignore[return-value]


def _too_large(name: str, shape: Sequence[int], limit: int, streamable: bool) -> UploadTooLarge:
    voxels = math.prod(int(s) for s in shape)
    dims = "x".join(str(int(s)) for s in shape)
    advice = (
        "read it in regions instead"
        if streamable
        else "this format is read whole, so convert the file to a chunked format (OME-Zarr, N5 or HDF5) to use it"
    )
    return UploadTooLarge(
        f"'{name}' has {voxels:,} voxels ({dims}), more than the {limit:,} this server reads into memory at once "
        f"(--conf max_voxels_in_memory); " + advice
    )


def _check_folder(path: str, root: str | None, name: str) -> str:
    """Refuse a container folder outside ``root`` or holding symbolic links out of it; returns its real path.

    The walk only looks at directory entries (no reads, no following of symbolic links)."""
    real = os.path.realpath(path)
    if root is not None and not _inside(real, os.path.realpath(root)):
        raise VolumeError(f"'{name}' is not inside the folder volumes may be read from")
    if not os.path.isdir(real):
        raise VolumeError(f"'{name}' is not a folder")
    stack = [path]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_symlink():
                    if not _inside(os.path.realpath(entry.path), real):
                        inner = os.path.relpath(entry.path, path)
                        raise VolumeError(
                            f"'{name}' contains a link ('{inner}') to a file outside it; "
                            "links out of a volume are not allowed"
                        )
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return real


def _pick_dataset(names: Sequence[str], dataset: str | None, name: str, links: Sequence[str] = ()) -> str:
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


def _pick_axes(values: Sequence[Any], keep: tuple[int, int, int], ndim: int) -> list[Any] | None:
    """Per-axis attribute values for the kept axes: one value per native axis, or exactly three."""
    values = list(values)
    if len(values) == ndim:
        return [values[i] for i in keep]
    if len(values) == 3:
        return values
    return None


def _spacing_from_attrs(
    attrs: dict, keep: tuple[int, int, int], ndim: int, xyz: bool = False
) -> tuple[float, float, float] | None:
    """Voxel size from the attribute conventions in use (CREMI, ilastik, our data, N5 viewers); None if absent."""
    try:
        value = attrs.get("voxel_size_zyx_nm")
        if isinstance(value, bytes):
            value = value.decode()
        value = json.loads(value) if isinstance(value, str) else value
        if value is not None:  # our shared data; "null" where the source never said
            picked = _pick_axes(value, keep, ndim)
            return _valid_size([float(v) * 1e-3 for v in picked]) if picked else None
        if attrs.get("element_size_um") is not None:
            picked = _pick_axes(attrs["element_size_um"], keep, ndim)
            return _valid_size(picked)
        if isinstance(attrs.get("pixelResolution"), dict):  # n5-viewer / BigDataViewer: x, y, z
            res = attrs["pixelResolution"]
            factor = unit_factor(res.get("unit")) if res.get("unit") else 1.0
            if factor is None or "dimensions" not in res:
                return None
            picked = _pick_axes(list(res["dimensions"])[::-1], keep, ndim)
            return _valid_size([float(v) * factor for v in picked]) if picked else None
        if attrs.get("resolution") is not None:  # CREMI convention: nm; N5 stores it x first
            values = [float(v) * 1e-3 for v in attrs["resolution"]]
            picked = _pick_axes(values[::-1] if xyz else values, keep, ndim)
            return _valid_size(picked)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None  # a malformed attribute says nothing usable about the voxel size
    return None


def _ngff_spacing(
    attrs: dict, dataset: str, keep: tuple[int, int, int], ndim: int
) -> tuple[float, float, float] | None:
    """OME-NGFF multiscales: the scale transform of the chosen dataset."""
    try:
        for multiscale in attrs.get("multiscales", []):
            axes = [ax if isinstance(ax, dict) else {} for ax in multiscale.get("axes", [])]
            for ds in multiscale.get("datasets", []):
                if ds.get("path") != dataset:
                    continue
                for transform in ds.get("coordinateTransformations", []):
                    if transform.get("type") != "scale":
                        continue
                    scale = _pick_axes(transform["scale"], keep, ndim)
                    units = _pick_axes([ax.get("unit") for ax in axes], keep, ndim) if axes else None
                    if scale is None:
                        return None
                    factors = [unit_factor(u) if u else 1.0 for u in (units or [None] * 3)]
                    if any(f is None for f in factors):
                        return None
                    return _valid_size([float(s) * f for s, f in zip(scale, factors)])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return None


# --- decompression bombs ----------------------------------------------------------------------
# A chunk must not decode to more than a chunk's bytes: a few kB of gzip (deflate reaches 1000:1), or a
# forged size in a blosc/lz4/zstd header, would otherwise make the server allocate gigabytes.

_STREAM_CODECS = ("gzip", "zlib", "bz2", "lzma")
_SIZED_CODECS = ("blosc", "lz4", "zstd")
_LZMA_MEMLIMIT = 256 * 1024**2  # an xz header can ask for a dictionary of gigabytes


def _bomb(name: str, limit: int) -> VolumeError:
    return VolumeError(
        f"'{name}' has a chunk that decompresses to more than the {limit:,} bytes a chunk holds; the file is damaged"
    )


def _decompress_bounded(data: bytes, kind: str, limit: int, name: str, lzma_options: dict | None = None) -> bytes:
    """``data`` (``gzip``, ``zlib``, ``bz2`` or ``lzma`` streams, concatenated where the codec allows it)
    decompressed, stopping with :func:`_bomb` as soon as more than ``limit`` bytes come out."""
    out = bytearray()
    while True:
        if kind == "bz2":
            stream: Any = bz2.BZ2Decompressor()
        elif kind == "lzma":
            stream = lzma.LZMADecompressor(**(lzma_options or {}))
        else:
            stream = zlib.decompressobj(31 if kind == "gzip" else 15)
        out += stream.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _bomb(name, limit)
        if not stream.eof:
            raise VolumeError(f"'{name}' has a truncated {kind} chunk")
        data = stream.unused_data
        if not data or kind == "zlib":  # numcodecs' Zlib, and HDF5's deflate, read a single stream
            return bytes(out)


def _declared_size(kind: str, data: bytes) -> int | None:
    """The decoded size a blosc, lz4 or zstd chunk announces in its header (None: unreadable or not stated)."""
    if kind == "blosc":
        return struct.unpack_from("<I", data, 4)[0] if len(data) >= 16 else None
    if kind == "lz4":  # numcodecs prefixes the size
        return struct.unpack_from("<i", data, 0)[0] if len(data) >= 4 else None
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":  # zstd frame: magic, descriptor, ..., content size
        return None
    descriptor = data[4]
    single = (descriptor >> 5) & 1
    size_bytes = (single, 2, 4, 8)[descriptor >> 6]
    at = 5 + (1 - single) + (0, 1, 2, 4)[descriptor & 3]
    if size_bytes == 0 or len(data) < at + size_bytes:
        return None
    size = int.from_bytes(data[at : at + size_bytes], "little")
    return size + 256 if size_bytes == 2 else size


class _BoundedCodec:
    """A numcodecs compressor (as zarr calls it, read-only) that refuses chunks decoding to over ``limit`` bytes."""

    def __init__(self, codec: Any, limit: int, name: str):
        self.codec, self.codec_id, self._limit, self._name = codec, codec.codec_id, limit, name

    def get_config(self) -> dict:
        return self.codec.get_config()

    def decode(self, buf: Any, out: Any = None) -> Any:
        from numcodecs.compat import ensure_bytes, ndarray_copy

        data = ensure_bytes(buf)
        if self.codec_id in _STREAM_CODECS:
            options = None
            if self.codec_id == "lzma":
                raw = self.codec.format == lzma.FORMAT_RAW  # only raw streams carry their filters outside
                options = {"format": self.codec.format, **({"filters": self.codec.filters} if raw else {})}
                options.update({} if raw else {"memlimit": _LZMA_MEMLIMIT})
            decoded = _decompress_bounded(data, self.codec_id, self._limit, self._name, options)
            return decoded if out is None else ndarray_copy(decoded, out)
        size = _declared_size(self.codec_id, data)
        if self.codec_id == "zstd" and size is None:
            raise VolumeError(f"'{self._name}' has a zstd chunk that does not state its size; re-save it")
        if size is not None and size > self._limit:
            raise _bomb(self._name, self._limit)
        return self.codec.decode(buf, out)


def _bound_codecs(array: Any, name: str) -> None:
    """Wrap the decompressors of an opened zarr array (N5: inside zarr's N5 adapter) in :class:`_BoundedCodec`."""
    widths = [array.dtype.itemsize]  # filters may widen the data before it is compressed
    for codec in array.filters or []:
        widths += [np.dtype(v).itemsize for k, v in codec.get_config().items() if k in ("astype", "encode_dtype")]
    limit = math.prod(array.chunks) * max(widths)

    def bounded(codec: Any) -> Any:
        known = codec is not None and getattr(codec, "codec_id", None) in _STREAM_CODECS + _SIZED_CODECS
        return _BoundedCodec(codec, limit, name) if known else codec

    if getattr(array._compressor, "codec_id", None) == "n5_wrapper":
        array._compressor._compressor = bounded(array._compressor._compressor)
    else:
        array._compressor = bounded(array._compressor)
    array._filters = [bounded(codec) for codec in array._filters] if array._filters else array._filters


# --- the base class ---------------------------------------------------------------------------


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
        self.name = _display_name(self.path)
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
        _check_path(self.path)
        try:
            self._open(dataset)
        except BaseException as e:
            self.close()
            if isinstance(e, (VolumeError, UploadTooLarge, MemoryError)) or not isinstance(e, Exception):
                raise
            raise VolumeError(
                f"cannot read {self.source_format} file '{self.name}': {_scrub(str(e) or type(e).__name__, self.path)}"
            ) from e

    # Subclasses set shape, dtype, ... in _open and return the native array region in _read.
    def _open(self, dataset: str | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, roi: Roi) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` ((z, y, x) slices in this source's 3D space) as a new array."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        roi = _check_roi(roi, self.shape)
        shape = tuple(s.stop - s.start for s in roi)
        if 0 in shape:
            return np.zeros(shape, self.dtype)
        try:
            out = np.asarray(self._read(roi))
        except (VolumeError, UploadTooLarge, MemoryError):
            raise
        except Exception as e:
            raise VolumeError(
                f"cannot read {self.source_format} file '{self.name}': {_scrub(str(e) or type(e).__name__, self.path)}"
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
        self.shape = tuple(self._native_shape[i] for i in self._keep)  # type: ignore[assignment]

    def _native_index(self, roi: Roi) -> tuple:
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
        self.chunks = tuple(native_chunks[i] for i in self._keep)  # type: ignore[assignment]


class _WholeImageSource(VolumeSource):
    """Formats read whole on the first ``read`` (then regions are sliced from memory)."""

    _array: np.ndarray | None = None

    def _check_memory(self, streamable: bool = False) -> None:
        if self._max_voxels is not None and math.prod(self.shape) > self._max_voxels:
            raise _too_large(self.name, self.shape, self._max_voxels, streamable)

    def _load(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, roi: Roi) -> np.ndarray:
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


# --- TIFF -------------------------------------------------------------------------------------

_DEFAULT_DPI = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)  # screen/print settings, not a pixel size


class TiffSource(_WholeImageSource):
    """A TIFF's first series.

    Voxel size, in this order (None when none applies):

    1. OME-XML ``PhysicalSizeX/Y/Z`` with their units (default µm); needs X or Y, a missing Z is taken
       to equal X.
    2. ImageJ metadata with a length ``unit`` (µm, micron, nm, mm, ...): pixel size from the
       X/YResolution tags in that unit; z from ``spacing``, or 1 unit when absent (ImageJ writes no
       ``spacing`` when the voxel depth is 1 unit).
    3. The X/YResolution tags with ResolutionUnit inch (2, also the TIFF default) or centimetre (3); a
       missing z is taken to equal x. ResolutionUnit none (1), a 1/1 resolution, or a common screen/print
       dpi (72, 96, 150, 300, 600) says nothing about the sample: unknown.
    """

    source_format = "tiff"

    def _open(self, dataset: str | None) -> None:
        import tifffile

        # No multi-file series: tifffile would otherwise open sibling files named in the file.
        self._tif = tif = tifffile.TiffFile(self.path, _multifile=False, is_mmstack=False, is_ndtiff=False)
        tif.filehandle.set_lock(True)
        if tif.is_ome and tif.ome_metadata:
            _check_ome_single_file(tif.ome_metadata, self.name)
        if not tif.series:
            raise VolumeError(f"TIFF file '{self.name}' has no images")
        self._series = series = tif.series[0]
        axes = series.axes
        self._set_axes(series.shape, axes)
        kept = "".join(axes[i] for i in self._keep)
        if not kept.endswith("YX"):
            raise VolumeError(
                f"TIFF file '{self.name}' has axes '{axes}' (shape {tuple(series.shape)}); "
                "axonseg needs a single-channel 3D volume (z, y, x)"
            )
        self.dtype = _check_dtype(series.dtype, self.name)
        self.voxel_size = _tiff_voxel_size(tif, series.keyframe)
        self._memmap = None
        self._planes = False
        offset = series.dataoffset
        if offset is not None:  # uncompressed and contiguous: memory-map it
            file_dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            nbytes = math.prod(self._native_shape) * file_dtype.itemsize
            if offset + nbytes > os.path.getsize(self.path):
                raise VolumeError(f"TIFF file '{self.name}' is truncated: its image data run past the end of the file")
            self._memmap = np.memmap(self.path, dtype=file_dtype, mode="r", offset=offset, shape=self._native_shape)
            return
        keyframe = series.keyframe
        shaped = tuple(keyframe.shaped)
        planes = math.prod(self._native_shape[:-2])
        if (
            axes.endswith("YX")
            and shaped[0] == shaped[1] == shaped[4] == 1
            and shaped[2:4] == self._native_shape[-2:]
            and len(series.pages) == planes
        ):
            self._planes = True  # one 2D page per plane: read the pages (and their strips/tiles) in the roi
            return
        self._check_memory(streamable=False)  # anything else is decoded whole

    def _load(self) -> np.ndarray:
        return self._series.asarray()

    def _read(self, roi: Roi) -> np.ndarray:
        if self._memmap is not None:
            out = np.array(self._memmap[self._native_index(roi)])
            # The pages read stay mapped in this process (and count in its RSS) until dropped; the kernel
            # keeps them in its page cache, so a re-read costs no disk access.
            mapping = getattr(self._memmap, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)
            return out
        if not self._planes:
            return super()._read(roi)
        zs, ys, xs = roi
        out = np.empty(tuple(s.stop - s.start for s in roi), self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            out[i] = self._read_plane(z, ys, xs)
        return out

    def _read_plane(self, index: int, ys: slice, xs: slice) -> np.ndarray:
        """Rows ``ys`` and columns ``xs`` of page ``index`` of the series, decoding only the segments needed."""
        fh = self._tif.filehandle
        with self._lock:  # tifffile loads pages lazily, moving the file position
            page = self._series.pages[index]
            if page is None:
                raise VolumeError(f"TIFF file '{self.name}' is missing image plane {index}")
            keyframe = page.keyframe
            chunked, chunks = tuple(keyframe.chunked), tuple(keyframe.chunks)
            offsets, counts = page.dataoffsets, page.databytecounts
        if len(chunked) != 2 or len(chunks) != 2 or len(offsets) != math.prod(chunked):
            with self._lock:
                plane = np.asarray(page.asarray())
            if plane.shape != self._native_shape[-2:]:
                raise VolumeError(f"TIFF file '{self.name}': page {index} has shape {plane.shape}")
            return plane[ys, xs]
        (ny, nx), (ch, cw) = chunked, chunks
        rows = range(ys.start // ch, min(ny, -(-ys.stop // ch)))
        cols = range(xs.start // cw, min(nx, -(-xs.stop // cw)))
        wanted = [r * nx + c for r in rows for c in cols]
        out = np.empty((ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        with fh.lock:
            if hasattr(keyframe, "init_decode"):
                keyframe.init_decode()
            decode = keyframe.decode
        jpegtables = getattr(page, "jpegtables", None) or keyframe.jpegtables
        segments = fh.read_segments([offsets[i] for i in wanted], [counts[i] for i in wanted], wanted, lock=fh.lock)
        for data, i in segments:
            segment, (_, _, y, x, _), _shape = decode(
                data, i, jpegtables=jpegtables, jpegheader=keyframe.jpegheader, _fullsize=False
            )
            if segment is None:  # an empty segment
                block = np.full((ch, cw), keyframe.nodata, self.dtype)
            else:
                block = np.asarray(segment).reshape(segment.shape[-3:-1] if segment.ndim > 2 else segment.shape)
            y0, y1 = max(ys.start, y), min(ys.stop, y + block.shape[0])
            x0, x1 = max(xs.start, x), min(xs.stop, x + block.shape[1])
            if y1 > y0 and x1 > x0:
                out[y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start] = block[
                    y0 - y : y1 - y, x0 - x : x1 - x
                ]
        return out

    def close(self) -> None:
        self._memmap = None
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        super().close()


def _check_ome_single_file(xml: str, name: str) -> None:
    """Refuse an OME-TIFF whose image planes are in other files (a multi-file OME dataset).

    A file's planes are all tagged with one UUID (the root ``OME UUID`` where there is one); a second
    UUID means planes in another file. (tifffile is opened so that it never reads them anyway.)"""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return  # tifffile ignores unparsable OME-XML too
    own = root.attrib.get("UUID")
    files: dict[str, str] = {}  # UUID -> file name
    for element in root.iter():
        if element.tag.endswith("TiffData"):
            for uuid in element:
                if uuid.tag.endswith("UUID"):
                    files[(uuid.text or "").strip()] = uuid.attrib.get("FileName") or uuid.text or "?"
    if own is None and len(files) == 1:
        return
    others = [f for u, f in files.items() if u != (own or "").strip()]
    if others:
        listed = ", ".join(sorted(os.path.basename(o) for o in others)[:5])
        raise VolumeError(
            f"OME-TIFF '{name}' is part of a multi-file dataset (its images are also in {listed}); "
            "upload it as a single file"
        )


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes: dict[str, float | None] = {}
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        factor = unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        try:
            sizes[ax] = float(value) * factor if value is not None and factor is not None else None
        except ValueError:
            sizes[ax] = None
    x = sizes["X"] or sizes["Y"]
    y = sizes["Y"] or sizes["X"]
    if x is None or y is None:
        return None
    return _valid_size((sizes["Z"] or x, y, x))


def _tiff_pixel_size(page, tag: str) -> float | None:
    """Units per pixel from an X/YResolution tag (pixels per unit); None when absent or zero."""
    res = page.tags.get(tag)
    if res is None:
        return None
    try:
        num, den = res.value
        return float(den) / float(num) if num and den else None
    except (TypeError, ValueError):
        return None


def _tiff_voxel_size(tif, page) -> tuple[float, float, float] | None:
    """See :class:`TiffSource` for the rules."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_voxel_size(tif.ome_metadata)
        if size is not None:
            return size
    x = _tiff_pixel_size(page, "XResolution")
    y = _tiff_pixel_size(page, "YResolution")
    if x is None and y is None:
        return None
    x, y = x or y, y or x
    ij = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    factor = unit_factor(ij.get("unit"))
    if factor is not None:  # ImageJ calibration in a length unit
        if factor == UNIT_TO_UM["inch"] and _default_dpi(x, y):
            return None
        try:
            z = float(ij.get("spacing", 1.0))
        except (TypeError, ValueError):
            return None
        return _valid_size((z * factor, y * factor, x * factor))
    tag = page.tags.get("ResolutionUnit")
    try:
        unit = int(tag.value) if tag is not None else 2  # the TIFF default is inch
    except (TypeError, ValueError):
        return None
    factor = {2: UNIT_TO_UM["inch"], 3: UNIT_TO_UM["cm"]}.get(unit)
    if factor is None or (x == 1.0 and y == 1.0) or (unit == 2 and _default_dpi(x, y)):
        return None
    return _valid_size((x * factor, y * factor, x * factor))


def _default_dpi(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-6) and any(math.isclose(1.0 / x, d, rel_tol=1e-6) for d in _DEFAULT_DPI)


# --- HDF5 -------------------------------------------------------------------------------------


def _hdf5_walk(handle, name: str) -> tuple[list[str], set[str]]:
    """Datasets (2D or more) reached through hard links, and the soft links, of an open file.

    Links are looked at, never followed: an external link anywhere, or a soft link to a path that is not
    an object of this file, refuses the file."""
    import h5py

    datasets: list[str] = []
    objects: set[str] = {""}
    soft: dict[str, str] = {}
    seen = {handle.id}
    stack: list[tuple[str, Any]] = [("", handle)]
    count = 0
    while stack:
        prefix, group = stack.pop()
        for key in group:
            path = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise VolumeError(
                    f"'{name}' links to another file ('{os.path.basename(link.filename)}' at '{path}'); "
                    "HDF5 files with external links are not accepted"
                )
            if isinstance(link, h5py.SoftLink):
                target = link.path
                absolute = target if target.startswith("/") else f"/{prefix}{target}"
                soft[path] = "/".join(p for p in absolute.split("/") if p and p != ".")
                continue
            if not isinstance(link, h5py.HardLink):
                raise VolumeError(f"'{name}' has a link of an unsupported kind at '{path}'")
            count += 1
            if count > MAX_HDF5_OBJECTS:
                raise VolumeError(f"'{name}' holds more than {MAX_HDF5_OBJECTS:,} objects; too many to check")
            obj = group[key]
            objects.add(path)
            if isinstance(obj, h5py.Dataset):
                if obj.ndim >= 2:
                    datasets.append(path)
            elif isinstance(obj, h5py.Group) and obj.id not in seen:
                seen.add(obj.id)
                stack.append((path + "/", obj))
    for path, target in soft.items():
        if target not in objects:
            raise VolumeError(
                f"'{name}' has a link at '{path}' to '{target}', which is not in the file; such links are not accepted"
            )
    return sorted(datasets), set(soft)


def _check_hdf5_filters(ds, chosen: str, name: str) -> int | None:
    """Refuse a dataset compressed with a filter this HDF5 library lacks (a plugin such as Blosc, LZ4, JPEG):
    HDF5 would fail on every chunk, with a message about its plugin folder.

    Returns the position of the deflate filter when there is one (its stream is the stored chunk, perhaps
    followed by a Fletcher-32 checksum), for :meth:`Hdf5Source._check_inflated`; None without deflate."""
    import h5py

    plist = ds.id.get_create_plist()
    codes = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, label = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            label = label.decode("latin-1").strip() if isinstance(label, bytes) else str(label or "")
            raise VolumeError(
                f"dataset '{chosen}' in '{name}' is compressed with HDF5 filter {code}"
                + (f" ('{label}')" if label else "")
                + ", which this server cannot decode; re-save it with gzip or without compression"
            )
        codes.append(code)
    if h5py.h5z.FILTER_DEFLATE not in codes:
        return None
    position = codes.index(h5py.h5z.FILTER_DEFLATE)
    if any(code != h5py.h5z.FILTER_FLETCHER32 for code in codes[position + 1 :]):
        raise VolumeError(
            f"dataset '{chosen}' in '{name}' applies HDF5 filters after gzip ({codes}), which axonseg does not "
            "read; re-save it with gzip as the last filter"
        )
    return position


class Hdf5Source(VolumeSource):
    source_format = "hdf5"

    def _open(self, dataset: str | None) -> None:
        import h5py

        try:
            self._file = f = h5py.File(self.path, "r", locking=False)
        except TypeError:  # h5py without the locking argument
            self._file = f = h5py.File(self.path, "r")
        datasets, links = _hdf5_walk(f, self.name)
        chosen = _pick_dataset(datasets, dataset, self.name, links)
        ds = f[chosen]  # every part of the path is a hard link (found by the walk)
        if ds.is_virtual:
            raise VolumeError(
                f"dataset '{chosen}' in '{self.name}' is a virtual dataset (its data live in other files); not accepted"
            )
        if ds.external:
            raise VolumeError(f"dataset '{chosen}' in '{self.name}' stores its data in external files; not accepted")
        self._ds = ds
        self.dataset = chosen
        self._set_axes(ds.shape or ())
        self.dtype = _check_dtype(ds.dtype, self.name)
        self._set_chunks(ds.chunks, ds.dtype.itemsize)
        deflate = _check_hdf5_filters(ds, chosen, self.name)
        # Nothing to check without stored chunks (where h5py's raw chunk read fails with MemoryError).
        self._deflate = deflate if ds.id.get_storage_size() else None
        self._inflated: set[tuple[int, ...]] = set()  # chunks checked by _check_inflated
        attrs = {}
        for key in ("voxel_size_zyx_nm", "element_size_um", "pixelResolution", "resolution"):
            for owner in (ds.attrs, f.attrs):
                if key in owner:
                    attrs[key] = owner[key]
                    break
        self.voxel_size = _spacing_from_attrs(attrs, self._keep, len(self._native_shape))

    def _read(self, roi: Roi) -> np.ndarray:
        index = self._native_index(roi)
        if self._deflate is not None:
            self._check_inflated(index)
        return self._ds[index]

    def _check_inflated(self, index: tuple) -> None:
        """Inflate, bounded, the stored chunks ``index`` touches before HDF5 decodes them: HDF5's deflate filter
        grows its buffer until the stream ends, so a kilobyte of compressed zeros could take a megabyte."""
        ds = self._ds
        limit = math.prod(ds.chunks) * ds.dtype.itemsize
        starts = [
            range(i.start // c * c, i.stop, c) if isinstance(i, slice) else (i // c * c,)
            for i, c in zip(index, ds.chunks)
        ]
        for offset in itertools.product(*starts):
            if offset in self._inflated:
                continue
            try:  # (get_chunk_info_by_coord would say whether it is stored, but walks the chunk index each time)
                mask, data = ds.id.read_direct_chunk(offset)
            except RuntimeError:  # not stored: the fill value
                continue
            if not mask & (1 << self._deflate):  # the bit is set where the chunk was stored without deflate
                _decompress_bounded(data, "zlib", limit, self.name)
            if len(self._inflated) >= 1_000_000:  # bounded memory; a chunk read again is checked again
                self._inflated.clear()
            self._inflated.add(offset)

    def close(self) -> None:
        handle = getattr(self, "_file", None)
        if handle is not None:
            handle.close()
        super().close()


# --- Zarr / N5 --------------------------------------------------------------------------------

_STORE_CLASSES: dict[bool, type] = {}


def _guarded_store(path: str, real: str, n5: bool):
    """A zarr DirectoryStore (or N5Store) that refuses to read any file resolving outside ``real``."""
    import zarr

    cls = _STORE_CLASSES.get(n5)
    if cls is None:
        base = zarr.N5Store if n5 else zarr.DirectoryStore

        class GuardedStore(base):  # type: ignore[misc, valid-type]
            _real_root = ""

            def _fromfile(self, fn):
                if not _inside(os.path.realpath(fn), self._real_root):
                    raise VolumeError(f"'{_display_name(self.path)}' links to a file outside it; not accepted")
                with open(fn, "rb") as f:
                    return f.read()

        cls = _STORE_CLASSES[n5] = GuardedStore
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # zarr 2 deprecates N5Store
        store = cls(path)
    store._real_root = real
    return store


def _zarr_datasets(node, name: str) -> list[str]:
    import zarr

    if isinstance(node, zarr.Array):
        return [""]
    names: list[str] = []
    stack = [("", node, 0)]
    while stack:
        prefix, group, depth = stack.pop()
        if depth > MAX_ZARR_DEPTH:
            raise VolumeError(f"'{name}' nests groups more than {MAX_ZARR_DEPTH} deep")
        for key, item in group.items():
            if isinstance(item, zarr.Array):
                names.append(f"{prefix}{key}")
                if len(names) > MAX_ZARR_ARRAYS:
                    raise VolumeError(f"'{name}' holds more than {MAX_ZARR_ARRAYS:,} arrays")
            else:
                stack.append((f"{prefix}{key}/", item, depth + 1))
    return sorted(names)


def _check_codecs(array, name: str) -> None:
    codecs = list(array.filters or [])
    if array.compressor is not None:
        codecs.append(array.compressor)
    for codec in codecs:
        codec_id = getattr(codec, "codec_id", None)
        if codec_id == "n5_wrapper":  # zarr's N5 adapter: check the compressor it wraps
            config = getattr(codec, "compressor_config", None)
            if config is None:
                continue  # raw
            codec_id = config.get("id")
        if codec_id not in _SAFE_CODECS:
            raise VolumeError(
                f"'{name}' is encoded with '{codec_id}', which axonseg does not decode; "
                "re-save it with a standard compressor (blosc, zstd, gzip)"
            )


class ZarrSource(VolumeSource):
    source_format = "zarr"
    _n5 = False

    def _open(self, dataset: str | None) -> None:
        import zarr

        real = _check_folder(self.path, self._root, self.name)
        self._store = store = _guarded_store(self.path, real, self._n5)
        top = zarr.open(store, mode="r")
        chosen = _pick_dataset(_zarr_datasets(top, self.name), dataset, self.name)
        array = top if chosen == "" else top[chosen]
        _check_codecs(array, self.name)
        self._array = array
        self.dataset = chosen
        self._set_axes(array.shape)
        self.dtype = _check_dtype(array.dtype, self.name)
        self._set_chunks(array.chunks, array.dtype.itemsize)
        _bound_codecs(array, self.name)
        ndim = len(self._native_shape)
        # OME-NGFF: multiscales in the nearest group above the array that describes it.
        parts = chosen.split("/") if chosen else []
        spacing = None
        for cut in range(len(parts) - 1, -1, -1):
            group_attrs = dict(top.attrs) if cut == 0 else dict(top["/".join(parts[:cut])].attrs)
            spacing = _ngff_spacing(group_attrs, "/".join(parts[cut:]), self._keep, ndim)
            if spacing is not None:
                break
        if spacing is None:
            attrs = {**dict(top.attrs), **dict(array.attrs)} if chosen else dict(array.attrs)
            spacing = _spacing_from_attrs(attrs, self._keep, ndim, xyz=self._n5)
        self.voxel_size = spacing

    def _read(self, roi: Roi) -> np.ndarray:
        return self._array[self._native_index(roi)]

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        super().close()


class N5Source(ZarrSource):
    """N5 through zarr's N5Store, which already presents arrays (z, y, x) and voxel sizes x first."""

    source_format = "n5"
    _n5 = True


# --- NRRD / NIfTI (ITK) -----------------------------------------------------------------------

_NRRD_HEADER_LIMIT = 1024**2


def _check_nrrd_header(path: str, name: str) -> dict[str, str]:
    """The NRRD header fields; refuses detached data (``data file:``), which could be any file on the server."""
    with open(path, "rb") as f:
        head = f.read(_NRRD_HEADER_LIMIT)
    if not head.startswith(b"NRRD"):
        raise VolumeError(f"'{name}' is not an NRRD file")
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0), default=-1)
    if end < 0 and len(head) >= _NRRD_HEADER_LIMIT:
        raise VolumeError(f"NRRD file '{name}' has a header longer than {_NRRD_HEADER_LIMIT // 1024} KiB")
    fields: dict[str, str] = {}
    for line in head[: end if end >= 0 else len(head)].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if line.startswith("#") or not sep or value.startswith("="):  # comments and "key:=value" pairs
            continue
        fields[" ".join(key.lower().split())] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise VolumeError(
            f"NRRD file '{name}' keeps its voxels in another file ('data file:'); upload a single-file NRRD"
        )
    return fields


def _nrrd_sizes(fields: dict[str, str], name: str) -> tuple[int, ...] | None:
    """The (z, y, x, ...) sizes an NRRD header declares, any component axis included; None without ``sizes``."""
    text = fields.get("sizes")
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split())
    except ValueError:
        raise VolumeError(f"NRRD file '{name}' declares sizes that are not whole numbers ('{text[:80]}')") from None
    if any(s < 0 for s in sizes):
        raise VolumeError(f"NRRD file '{name}' declares a negative size ('{text[:80]}')")
    return sizes[::-1]


# NIfTI data types ITK reads as several components per voxel: complex, RGB, RGBA.
_NIFTI_COMPONENTS = {32: 2, 1792: 2, 2048: 2, 128: 3, 2304: 4}


def _check_nifti_header(path: str, name: str) -> tuple[bool, tuple[int, ...]]:
    """Refuses two-file (.hdr/.img) NIfTI and ANALYZE; returns whether the header states a voxel size, and the
    (z, y, x, ...) sizes it declares (components last, where a voxel has several). Only the first 540 bytes are
    read (inflated, for .nii.gz)."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(540)
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        if head[344:348] != b"n+1\x00":
            raise VolumeError(f"NIfTI file '{name}' keeps its voxels in a separate .img file; upload a single .nii")
        endian = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
        pixdim = struct.unpack(endian + "8f", head[76:108])
        units = head[123] & 0x07
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype = struct.unpack(endian + "h", head[70:72])[0]
    elif len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        if head[4:8] != b"n+2\x00":
            raise VolumeError(f"NIfTI file '{name}' keeps its voxels in a separate .img file; upload a single .nii")
        endian = "<" if struct.unpack("<i", head[:4])[0] == 540 else ">"
        pixdim = struct.unpack(endian + "8d", head[104:168])
        units = struct.unpack(endian + "i", head[500:504])[0] & 0x07
        dim = struct.unpack(endian + "8q", head[16:80])
        datatype = struct.unpack(endian + "h", head[12:14])[0]
    else:
        raise VolumeError(f"'{name}' is not a NIfTI-1 or NIfTI-2 file")
    if not 1 <= dim[0] <= 7:
        raise VolumeError(f"NIfTI file '{name}' declares {dim[0]} dimensions; a NIfTI image has 1 to 7")
    sizes = tuple(max(1, d) for d in dim[1 : dim[0] + 1])[::-1]  # a size below 1 is read as 1
    components = _NIFTI_COMPONENTS.get(datatype, 1)
    return units != 0 or any(p != 1.0 for p in pixdim[1:4]), sizes + ((components,) if components > 1 else ())


class ItkSource(_WholeImageSource):
    """NRRD or NIfTI through ITK: header first, pixels (whole) on the first read.

    The voxel size is known when the header states one (NRRD ``space directions``/``spacings``; NIfTI
    spatial units or pixel dimensions other than 1); its numbers are micrometres, as axonseg writes them.
    """

    def _open(self, dataset: str | None) -> None:
        if self.source_format == "nrrd":
            fields = _check_nrrd_header(self.path, self.name)
            known = "space directions" in fields or "spacings" in fields
            declared = _nrrd_sizes(fields, self.name)
        else:
            known, declared = _check_nifti_header(self.path, self.name)
        # From our own reading of the header, before ITK reads or inflates anything: a few kB of gzip may declare
        # gigavoxels, and ITK would allocate them all on the first read.
        if declared is not None and self._max_voxels is not None and math.prod(declared) > self._max_voxels:
            raise _too_large(self.name, declared, self._max_voxels, streamable=False)
        import itk

        io = itk.NrrdImageIO.New() if self.source_format == "nrrd" else itk.NiftiImageIO.New()
        if not io.CanReadFile(self.path):
            raise VolumeError(f"cannot read {self.source_format} file '{self.name}'")
        io.SetFileName(self.path)
        io.ReadImageInformation()
        self._io = io
        ndim = io.GetNumberOfDimensions()
        dims = [int(io.GetDimensions(i)) for i in range(ndim)]  # x first
        if io.GetNumberOfComponents() != 1:
            raise VolumeError(
                f"'{self.name}' has {io.GetNumberOfComponents()} components per voxel; "
                "axonseg needs a single-channel 3D volume (z, y, x)"
            )
        self._set_axes(dims[::-1])
        self._check_memory(streamable=False)
        component = io.GetComponentTypeAsString(io.GetComponentType())
        self.dtype = _check_dtype(_ITK_COMPONENTS.get(component, "V"), self.name)
        self._pixel = _ITK_READ_AS.get(self.dtype.str[1:])
        if self._pixel is None:
            raise VolumeError(
                f"'{self.name}' has {self.dtype} voxels, which axonseg cannot read from {self.source_format}; "
                "convert it to 32-bit integers or to floats"
            )
        if ndim >= 3:
            spacing = [float(io.GetSpacing(i)) for i in range(3)][::-1]
            self.voxel_size = _valid_size(spacing) if known else None
            # A damaged header's NaN or infinite geometry says nothing (and JSON cannot store it): the defaults.
            origin = tuple(float(io.GetOrigin(i)) for i in range(3))[::-1]
            self.origin = origin if all(map(math.isfinite, origin)) else (0.0, 0.0, 0.0)  # type: ignore[assignment]
            direction = np.array([list(io.GetDirection(i))[:3] for i in range(3)], dtype=float).T
            usable = np.isfinite(direction).all() and not np.allclose(direction, np.eye(3))
            self.direction = direction if usable else None

    def _load(self) -> np.ndarray:
        import itk

        image = itk.imread(self.path, pixel_type=getattr(itk, self._pixel), imageio=self._io)
        return np.asarray(itk.array_from_image(image)).astype(self.dtype, copy=False)

    def close(self) -> None:
        self._io = None
        super().close()


class NrrdSource(ItkSource):
    source_format = "nrrd"


class NiftiSource(ItkSource):
    source_format = "nifti"


_ITK_COMPONENTS = {
    "unsigned_char": "u1",
    "char": "i1",
    "unsigned_short": "u2",
    "short": "i2",
    "unsigned_int": "u4",
    "int": "i4",
    "unsigned_long": "u8",
    "long": "i8",
    "unsigned_long_long": "u8",
    "long_long": "i8",
    "float": "f4",
    "double": "f8",
}
# The ITK pixel type each dtype is read as. ITK's Python wrapping lacks signed char and 64-bit signed
# integers: asking for one makes itk.imread load every ITK module looking for it (15 s) and then fail.
# int8 is read as int16 (and cast back, losslessly); int64 is refused.
_ITK_READ_AS = {
    "u1": "UC",
    "i1": "SS",
    "u2": "US",
    "i2": "SS",
    "u4": "UI",
    "i4": "SI",
    "u8": "ULL",
    "f4": "F",
    "f8": "D",
}


# --- PNG stacks -------------------------------------------------------------------------------

_PNG_MODES = {
    "1": np.uint8,
    "L": np.uint8,
    "P": np.uint8,
    "LA": np.uint8,
    "RGB": np.uint8,
    "RGBA": np.uint8,
    "I;16": np.uint16,
    "I;16B": np.uint16,
    "I;16L": np.uint16,
    "I": np.int32,
    "F": np.float32,
}


class PngStackSource(VolumeSource):
    """A folder of 2D PNG slices in name order; colour slices of a grey image keep their first channel."""

    source_format = "png_stack"

    def _open(self, dataset: str | None) -> None:
        from PIL import Image

        _check_folder(self.path, self._root, self.name)
        with os.scandir(self.path) as entries:
            self._files = sorted(e.name for e in entries if e.name.lower().endswith(".png") and e.is_file())
        if not self._files:
            raise VolumeError(f"'{self.name}' holds no PNG slices")
        with Image.open(os.path.join(self.path, self._files[0])) as first:
            width, height = first.size
            mode = first.mode
        if mode not in _PNG_MODES:
            raise VolumeError(f"PNG slices in '{self.name}' have the unsupported mode '{mode}'")
        self._set_axes((len(self._files), height, width))
        self.dtype = _check_dtype(_PNG_MODES[mode], self.name)

    def _read(self, roi: Roi) -> np.ndarray:
        from PIL import Image

        zs, ys, xs = roi
        out = np.empty(tuple(s.stop - s.start for s in roi), self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            with Image.open(os.path.join(self.path, self._files[z])) as image:
                plane = np.asarray(image)
            if plane.ndim == 3:  # RGB(A) slices of a grey image: keep one channel
                plane = plane[..., 0]
            if plane.shape != self.shape[1:]:
                raise VolumeError(
                    f"PNG slices in '{self.name}' differ in shape: '{self._files[z]}' is {plane.shape}, "
                    f"'{self._files[0]}' is {self.shape[1:]}"
                )
            out[i] = plane[ys, xs]
        return out


# --- opening ----------------------------------------------------------------------------------

_SOURCES: dict[str, type[VolumeSource]] = {
    "tiff": TiffSource,
    "hdf5": Hdf5Source,
    "zarr": ZarrSource,
    "n5": N5Source,
    "nrrd": NrrdSource,
    "nifti": NiftiSource,
    "png_stack": PngStackSource,
}


def open_source(
    path: str | os.PathLike,
    dataset: str | None = None,
    *,
    root: str | None = None,
    max_voxels_in_memory: int | None = None,
) -> VolumeSource:
    """Open a volume for region reads, checking it without reading voxels.

    Args:
        path: file, or folder (Zarr, N5, PNG stack); the reader is chosen by extension.
        dataset: dataset inside an HDF5/Zarr/N5 container; found automatically when omitted (a default
            name from :data:`DEFAULT_DATASETS`, else the only one). Ignored for other formats.
        root: a folder ``path`` must be inside (real paths compared). Zarr/N5/PNG folders must not
            hold symbolic links to anything outside themselves, whatever ``root``.
        max_voxels_in_memory: for formats that are read whole (NRRD, NIfTI, TIFF layouts that cannot
            be read by region), a bigger volume raises :class:`UploadTooLarge` before any voxel is read.

    Raises:
        VolumeError: the file cannot be used (422). UploadTooLarge: see ``max_voxels_in_memory`` (413).
    """
    path = os.fspath(path)
    _check_path(path)
    name = _display_name(path)
    if not os.path.exists(path):
        raise VolumeError(f"file not found: {name}")
    fmt = volume_format(path)
    if root is not None and not _inside(os.path.realpath(path), os.path.realpath(root)):
        raise VolumeError(f"'{name}' is not inside the folder volumes may be read from")
    return _SOURCES[fmt](path, dataset, root=root, max_voxels_in_memory=max_voxels_in_memory)
