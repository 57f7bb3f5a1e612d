"""The rules that keep a reader inside the upload, shared by every format.

- A path holding NUL or another control character is refused before anything is opened (:func:`check_path`).
- Container folders (Zarr, N5, PNG stacks) must be inside ``root``, and no entry in them may be a symbolic link
  resolving outside them: checked once when opening, by a cheap ``lstat`` walk (:func:`check_folder`); Zarr/N5
  check it again for every chunk file read (``lib.volumes.formats.zarr``).
- Only standard numcodecs compressors and filters are decoded (``pickle`` would run code): :func:`check_codecs`.
- Compressed chunks (HDF5 gzip; Zarr/N5 gzip, zlib, bz2, lzma, blosc, lz4, zstd) may not decode to more than a
  chunk's bytes: a decompression bomb is refused before it is inflated (HDF5's LZF is not checked):
  :func:`decompress_bounded`, :func:`bound_codecs`.
- Formats read whole refuse a volume over ``max_voxels_in_memory`` before any voxel is read (:func:`too_large`).
- Error messages name files by their base name, never the server's folders (:func:`scrub`).
"""

from __future__ import annotations

import bz2
import lzma
import math
import os
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import UploadTooLarge, VolumeError

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


def display_name(path: str | os.PathLike) -> str:
    return os.path.basename(str(path).rstrip("/")) or str(path)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_path(path: str) -> None:
    """Refuse a path holding NUL or another control character: the OS rejects NUL with a bare ValueError, and
    a newline could forge a line in the log or a message. The name is shown escaped."""
    text = os.fsdecode(path)
    if _CONTROL.search(text):
        shown = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), display_name(text))
        raise VolumeError(f"the file name '{shown}' contains a NUL or control character; rename the file")


def scrub(message: str, path: str) -> str:
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
        message = message.replace(p, display_name(p))
    for d in {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}:
        if d and d != os.sep:
            message = message.replace(d + os.sep, "")
    return message if len(message) <= 400 else message[:400] + "..."


def inside(path: str, folder: str) -> bool:
    """Both real paths: is ``path`` ``folder`` or inside it?"""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


def too_large(name: str, shape: Sequence[int], limit: int, streamable: bool) -> UploadTooLarge:
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


def check_folder(path: str, root: str | None, name: str) -> str:
    """Refuse a container folder outside ``root`` or holding symbolic links out of it; returns its real path.

    The walk only looks at directory entries (no reads, no following of symbolic links)."""
    real = os.path.realpath(path)
    if root is not None and not inside(real, os.path.realpath(root)):
        raise VolumeError(f"'{name}' is not inside the folder volumes may be read from")
    if not os.path.isdir(real):
        raise VolumeError(f"'{name}' is not a folder")
    stack = [path]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_symlink():
                    if not inside(os.path.realpath(entry.path), real):
                        inner = os.path.relpath(entry.path, path)
                        raise VolumeError(
                            f"'{name}' contains a link ('{inner}') to a file outside it; "
                            "links out of a volume are not allowed"
                        )
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return real


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


def decompress_bounded(data: bytes, kind: str, limit: int, name: str, lzma_options: dict | None = None) -> bytes:
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
            decoded = decompress_bounded(data, self.codec_id, self._limit, self._name, options)
            return decoded if out is None else ndarray_copy(decoded, out)
        size = _declared_size(self.codec_id, data)
        if self.codec_id == "zstd" and size is None:
            raise VolumeError(f"'{self._name}' has a zstd chunk that does not state its size; re-save it")
        if size is not None and size > self._limit:
            raise _bomb(self._name, self._limit)
        return self.codec.decode(buf, out)


def bound_codecs(array: Any, name: str) -> None:
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


def check_codecs(array, name: str) -> None:
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
