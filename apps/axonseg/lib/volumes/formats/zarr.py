"""Zarr and N5 folders, read by region (whole chunks at most).

Safety: the folder is inside ``root`` and no entry in it is a symbolic link resolving outside it (checked once
when opening, and again for every chunk file read, by the store); only standard numcodecs compressors and
filters are decoded, and none may decode a chunk to more than a chunk's bytes (:mod:`.safety`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ...errors import VolumeError
from .base import Slices, VolumeSource, check_dtype, pick_dataset
from .metadata import ngff_spacing, spacing_from_attrs
from .safety import bound_codecs, check_codecs, check_folder, display_name, inside

# Zarr/N5 groups nested deeper than this, or holding more arrays, are refused rather than listed.
MAX_ZARR_DEPTH = 32
MAX_ZARR_ARRAYS = 10_000

_STORE_CLASSES: dict[bool, type] = {}


class _Guarded:
    """Mixed into a zarr store class (before it): chunk files are read only where they resolve inside the folder."""

    _real_root = ""
    path: str

    def _fromfile(self, fn: str) -> bytes:
        if not inside(os.path.realpath(fn), self._real_root):
            raise VolumeError(f"'{display_name(self.path)}' links to a file outside it; not accepted")
        with open(fn, "rb") as f:
            return f.read()


def _guarded_store(path: str, real: str, n5: bool):
    """A zarr DirectoryStore (or N5Store) that refuses to read any file resolving outside ``real``."""
    import zarr

    cls = _STORE_CLASSES.get(n5)
    if cls is None:
        base = zarr.N5Store if n5 else zarr.DirectoryStore
        cls = _STORE_CLASSES[n5] = type("GuardedStore", (_Guarded, base), {})
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


class ZarrSource(VolumeSource):
    source_format = "zarr"
    _n5 = False

    def _open(self, dataset: str | None) -> None:
        import zarr

        real = check_folder(self.path, self._root, self.name)
        self._store = store = _guarded_store(self.path, real, self._n5)
        top = zarr.open(store, mode="r")
        chosen = pick_dataset(_zarr_datasets(top, self.name), dataset, self.name)
        array = top if chosen == "" else top[chosen]
        check_codecs(array, self.name)
        self._array = array
        self.dataset = chosen
        self._set_axes(array.shape)
        self.dtype = check_dtype(array.dtype, self.name)
        self._set_chunks(array.chunks, array.dtype.itemsize)
        bound_codecs(array, self.name)
        ndim = len(self._native_shape)
        # OME-NGFF: multiscales in the nearest group above the array that describes it.
        parts = chosen.split("/") if chosen else []
        spacing = None
        for cut in range(len(parts) - 1, -1, -1):
            group_attrs = dict(top.attrs) if cut == 0 else dict(top["/".join(parts[:cut])].attrs)
            spacing = ngff_spacing(group_attrs, "/".join(parts[cut:]), self._keep, ndim)
            if spacing is not None:
                break
        if spacing is None:
            attrs = {**dict(top.attrs), **dict(array.attrs)} if chosen else dict(array.attrs)
            spacing = spacing_from_attrs(attrs, self._keep, ndim, xyz=self._n5)
        self.voxel_size = spacing

    def _read(self, roi: Slices) -> np.ndarray:
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
