"""Labels that come back from a DICOMweb viewer: STOW-RS bodies, and DICOM SEG objects read onto the grid
of the series they were drawn on (OHIF's "Export DICOM SEG" stores one)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..errors import InvalidRequest, UnsupportedMediaType
from .series import SeriesView

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_SEGMENTS = 255  # OHIF's label maps hold 255 segments


def stow_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a STOW-RS ``multipart/related`` body (RFC 2387); 415 unless it is one."""
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not '{content_type or 'nothing'}'"
        )
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise InvalidRequest("the multipart/related body names no boundary")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise InvalidRequest("a part of the multipart body has no header end")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    if not parts:
        raise InvalidRequest("the multipart body holds no DICOM instance")
    return parts


def read_instance(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom raises many kinds on garbage
        raise InvalidRequest(f"a stored part is not a DICOM instance: {e}") from None


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
