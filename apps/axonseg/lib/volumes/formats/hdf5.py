"""HDF5, read by region (whole chunks at most).

Safety: no external links anywhere in the file, no soft links to paths that do not exist in it (soft links to
objects inside the file are tolerated but never listed or followed when choosing a dataset), and the chosen
dataset has neither external raw storage nor a virtual (VDS) layout. Gzip chunks are inflated, bounded, before
HDF5 decodes them (a decompression bomb is refused); LZF is not checked.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

import numpy as np

from ...errors import VolumeError
from .base import Slices, VolumeSource, check_dtype, pick_dataset
from .metadata import spacing_from_attrs
from .safety import decompress_bounded

# An HDF5 file with more objects than this is refused rather than walked.
MAX_HDF5_OBJECTS = 100_000


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
        chosen = pick_dataset(datasets, dataset, self.name, links)
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
        self.dtype = check_dtype(ds.dtype, self.name)
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
        self.voxel_size = spacing_from_attrs(attrs, self._keep, len(self._native_shape))

    def _read(self, roi: Slices) -> np.ndarray:
        index = self._native_index(roi)
        if self._deflate is not None:
            self._check_inflated(index, self._deflate)
        return self._ds[index]

    def _check_inflated(self, index: tuple, deflate: int) -> None:
        """Inflate, bounded, the stored chunks ``index`` touches before HDF5 decodes them: HDF5's deflate filter
        grows its buffer until the stream ends, so a kilobyte of compressed zeros could take a megabyte.
        ``deflate``: the deflate filter's position in the dataset's filter pipeline."""
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
            if not mask & (1 << deflate):  # the bit is set where the chunk was stored without deflate
                decompress_bounded(data, "zlib", limit, self.name)
            if len(self._inflated) >= 1_000_000:  # bounded memory; a chunk read again is checked again
                self._inflated.clear()
            self._inflated.add(offset)

    def close(self) -> None:
        handle = getattr(self, "_file", None)
        if handle is not None:
            handle.close()
        super().close()
