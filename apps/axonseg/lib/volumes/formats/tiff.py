"""TIFF (and OME-TIFF, ImageJ TIFF): a file's first series, read by region.

Safety: OME-TIFF series referring to other files are refused, and tifffile's multi-file readers (OME,
Micro-Manager MMStack, NDTiff) are switched off so that it never opens a sibling file.

Region reads memory-map contiguous uncompressed data, or decode just the strips/tiles of the pages in the
region; other layouts are decoded whole (bounded by ``max_voxels_in_memory``).
"""

from __future__ import annotations

import math
import mmap
import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from ...errors import VolumeError
from .base import Slices, WholeImageSource, check_dtype
from .metadata import tiff_voxel_size


class TiffSource(WholeImageSource):
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
        self.dtype = check_dtype(series.dtype, self.name)
        self.voxel_size = tiff_voxel_size(tif, series.keyframe)
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

    def _read(self, roi: Slices) -> np.ndarray:
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
            if keyframe is None:
                raise VolumeError(f"TIFF file '{self.name}': image plane {index} has no key frame to decode it with")
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
