"""Region-readable, untrusting readers for every volume format axonseg accepts.

:func:`open_source` opens a file or folder lazily and checks it without reading voxel data (:mod:`.base`).
One module per format holds that format's reader and its safety rules (:mod:`.tiff`, :mod:`.hdf5`,
:mod:`.zarr` for Zarr and N5, :mod:`.itk` for NRRD and NIfTI, :mod:`.png`); the rules all formats share
(paths, folders, links, decompression bombs, codecs) are in :mod:`.safety`, and units and voxel sizes in
:mod:`.metadata`.
"""

from __future__ import annotations

import os

from ...errors import VolumeError
from .base import DEFAULT_DATASETS, FORMATS, Slices, VolumeSource, full_roi, volume_extension, volume_format
from .hdf5 import Hdf5Source
from .itk import NiftiSource, NrrdSource
from .metadata import UNIT_TO_UM, to_um, unit_factor
from .png import PngStackSource
from .safety import check_path, display_name, inside
from .tiff import TiffSource
from .zarr import N5Source, ZarrSource

__all__ = [
    "DEFAULT_DATASETS",
    "FORMATS",
    "UNIT_TO_UM",
    "Hdf5Source",
    "N5Source",
    "NiftiSource",
    "NrrdSource",
    "PngStackSource",
    "Slices",
    "TiffSource",
    "VolumeSource",
    "ZarrSource",
    "full_roi",
    "open_source",
    "to_um",
    "unit_factor",
    "volume_extension",
    "volume_format",
]

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
    check_path(path)
    name = display_name(path)
    if not os.path.exists(path):
        raise VolumeError(f"file not found: {name}")
    fmt = volume_format(path)
    if root is not None and not inside(os.path.realpath(path), os.path.realpath(root)):
        raise VolumeError(f"'{name}' is not inside the folder volumes may be read from")
    return _SOURCES[fmt](path, dataset, root=root, max_voxels_in_memory=max_voxels_in_memory)
