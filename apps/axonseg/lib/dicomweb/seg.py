"""Labels that come back from a DICOMweb viewer: STOW-RS bodies, and DICOM SEG objects read onto the grid
of the series they were drawn on (OHIF's "Export DICOM SEG" stores one)."""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..errors import InvalidRequest, UnsupportedMediaType
from .series import SeriesView

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_SEGMENTS = 255  # OHIF's label maps hold 255 segments
Body = bytes | mmap.mmap  # a body in memory, or a saved one mapped
# Instances one STOW-RS request may store (OHIF stores one SEG at a time): a body of a million empty parts must not
# become a million parsed datasets.
MAX_STOW_PARTS = 1000


def stow_delimiter(content_type: str) -> bytes:
    """The part delimiter (``--boundary``) of a STOW-RS ``multipart/related`` body (RFC 2387), from its
    Content-Type alone, so that a wrong body is refused (415, 400) before a byte of it is read."""
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not '{content_type or 'nothing'}'"
        )
    found = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    boundary = found.group(1).strip() if found else ""
    if not boundary:
        raise InvalidRequest("the multipart/related body names no boundary")
    return b"--" + boundary.encode("latin-1", "replace")


def part_spans(body: Body, delimiter: bytes, max_parts: int | None = None) -> list[tuple[int, int]]:
    """Where each part's payload lies in ``body`` (start, end), found by searching it in place (``body`` may be
    a memory-mapped file: nothing is copied); 400 beyond ``max_parts`` parts."""
    spans: list[tuple[int, int]] = []
    at = body.find(delimiter)
    while at >= 0:
        at += len(delimiter)
        if body[at : at + 2] == b"--":
            break
        if max_parts is not None and len(spans) == max_parts:
            raise InvalidRequest(f"the multipart body holds more than {max_parts} parts; store fewer instances at once")
        end = body.find(delimiter, at)
        stop = len(body) if end < 0 else end
        header_end = body.find(b"\r\n\r\n", at, stop)
        if header_end < 0:
            raise InvalidRequest("a part of the multipart body has no header end")
        start = header_end + 4
        spans.append((start, stop - 2 if stop - start >= 2 and body[stop - 2 : stop] == b"\r\n" else stop))
        at = end
    if not spans:
        raise InvalidRequest("the multipart body holds no DICOM instance")
    return spans


def stow_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related`` body held in memory (a WADO-RS reply); 415 unless it is one."""
    return [body[start:end] for start, end in part_spans(body, stow_delimiter(content_type))]


def stow_instances(path: str, content_type: str) -> list[Dataset]:
    """The DICOM instances of a STOW-RS body saved at ``path``. The file is memory-mapped and each part parsed
    in place: neither the body nor one big junk part is copied into memory whole."""
    delimiter = stow_delimiter(content_type)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidRequest("the multipart body is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as body:
            return [read_instance(body, start, end) for start, end in part_spans(body, delimiter, MAX_STOW_PARTS)]


class _PartReader:
    """A read-only file over ``body[start:end]`` for pydicom: it copies what it parses, never the whole part, and
    an element length forged in junk reads at most what the part holds."""

    def __init__(self, body: Body, start: int, end: int):
        self._body, self._start, self._end, self._pos = body, start, end, start

    def read(self, size: int | None = -1) -> bytes:
        stop = self._end if size is None or size < 0 else min(self._end, self._pos + size)
        data = self._body[self._pos : stop] if stop > self._pos else b""
        self._pos = max(self._pos, stop)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (self._start, self._pos, self._end)[whence]
        self._pos = min(max(self._start, base + offset), self._end)
        return self._pos - self._start

    def tell(self) -> int:
        return self._pos - self._start

    def close(self) -> None:
        self._body = b""  # the dataset keeps its reader: not the (soon closed) mapping
        self._start = self._end = self._pos = 0


def read_instance(body: Body, start: int = 0, end: int | None = None) -> Dataset:
    """The DICOM instance in ``body[start:end]`` (all of ``body`` by default); 400 for anything else."""
    reader = _PartReader(body, start, len(body) if end is None else end)
    try:
        return pydicom.dcmread(cast(BinaryIO, reader), force=True)  # reads, seeks and tells: all pydicom uses
    except Exception as e:  # pydicom raises many kinds on garbage
        raise InvalidRequest(f"a stored part is not a DICOM instance: {e}") from None
    finally:
        reader.close()


@dataclass(frozen=True)
class Segment:
    number: int
    label: str
    mask: np.ndarray  # bool (z, y, x) on the series' grid


def referenced_series(ds: Dataset) -> str:
    try:
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        raise InvalidRequest("the segmentation names no referenced series (ReferencedSeriesSequence)") from None


def read_segmentation(ds: Dataset, series: SeriesView) -> list[Segment]:
    """Each segment of a DICOM SEG as a mask on ``series``' voxels. Frames are placed by the section they
    were derived from (ReferencedSOPInstanceUID), else by their ImagePositionPatient."""
    if str(getattr(ds, "SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise InvalidRequest(f"only DICOM SEG objects can be stored here, not SOP class {ds.get('SOPClassUID')}")
    shape = series.shape
    if (int(ds.Rows), int(ds.Columns)) != shape[1:]:
        raise InvalidRequest(f"the segmentation's frames are {ds.Rows}x{ds.Columns}, its series' {shape[1]}x{shape[2]}")
    # at most one frame per segment and section: a bound on what unpacking the bit-packed frames may allocate
    segments, frames_declared = len(getattr(ds, "SegmentSequence", [])), int(getattr(ds, "NumberOfFrames", 1))
    if not 1 <= segments <= MAX_SEGMENTS or frames_declared > segments * shape[0]:
        raise InvalidRequest(
            f"the segmentation has {frames_declared} frames of {segments} segments; a series of {shape[0]} sections "
            f"takes at most one frame per segment and section, and 1 to {MAX_SEGMENTS} segments"
        )
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise InvalidRequest(f"the segmentation's pixels cannot be read: {e}") from None
    frames = pixels.reshape((-1, *shape[1:]))
    threshold = 0 if getattr(ds, "SegmentationType", "BINARY") == "BINARY" else ds.MaximumFractionalValue / 2
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    masks = {n: np.zeros(shape, bool) for n in labels}
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != len(frames):
        raise InvalidRequest(f"the segmentation has {len(frames)} frames but describes {len(per_frame)}")
    for groups, frame in zip(per_frame, frames):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number not in masks:
            raise InvalidRequest(f"a frame refers to segment {number}, which the segmentation does not describe")
        masks[number][_section(groups, series)] |= frame > threshold
    return [Segment(n, labels[n], masks[n]) for n in sorted(labels)]


def _section(groups: Dataset, series: SeriesView) -> int:
    try:
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        return series.section_of(str(source))
    except (AttributeError, IndexError):
        pass
    try:
        position = np.array([float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient])
    except (AttributeError, IndexError):
        raise InvalidRequest("a segmentation frame names neither its source section nor its position") from None
    # distance from the first section along the slice normal, in sections (a quarter section of slack)
    first, normal, dz = np.array(series.position_mm(0)), series.direction[:, 2], series.spacing_um[0] or 1.0
    k = float(np.dot(position - first, normal)) / dz
    in_plane = np.linalg.norm(position - first - k * dz * normal)
    section = round(k)
    if abs(k - section) > 0.25 or not 0 <= section < series.shape[0] or in_plane > 0.25 * min(series.spacing_um):
        raise InvalidRequest(f"a segmentation frame at {position.tolist()} mm lies on no section of its series")
    return section
