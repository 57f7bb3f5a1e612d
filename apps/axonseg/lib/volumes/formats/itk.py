"""NRRD and NIfTI through ITK: header first, then the whole image on the first read.

These formats cannot be streamed reliably. The header is read first, by this module, before ITK sees the file
(a few kB of gzip or bzip2 can declare gigavoxels): the voxel count it declares, components included, is checked
against ``max_voxels_in_memory``. NRRD: detached data (``data file:``) is refused. NIfTI: only single-file
``n+1``/``n+2`` images.
"""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np

from ...errors import VolumeError
from .base import WholeImageSource, check_dtype
from .metadata import valid_size
from .safety import too_large

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


class ItkSource(WholeImageSource):
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
            raise too_large(self.name, declared, self._max_voxels, streamable=False)
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
        self.dtype = check_dtype(_ITK_COMPONENTS.get(component, "V"), self.name)
        pixel = _ITK_READ_AS.get(self.dtype.str[1:])
        if pixel is None:
            raise VolumeError(
                f"'{self.name}' has {self.dtype} voxels, which axonseg cannot read from {self.source_format}; "
                "convert it to 32-bit integers or to floats"
            )
        self._pixel: str = pixel
        if ndim >= 3:
            spacing = [float(io.GetSpacing(i)) for i in range(3)][::-1]
            self.voxel_size = valid_size(spacing) if known else None
            # A damaged header's NaN or infinite geometry says nothing (and JSON cannot store it): the defaults.
            x, y, z = (float(io.GetOrigin(i)) for i in range(3))
            origin = (z, y, x)
            self.origin = origin if all(map(math.isfinite, origin)) else (0.0, 0.0, 0.0)
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
