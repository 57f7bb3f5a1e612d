"""Datastore images as DICOM, generated on demand: one study per image, one series per annotation region
(and one for the whole image when it fits in a view), one single-frame instance per z section.

UIDs are ``2.25.<uuid5>`` of the image or region id, so they are the same on every server start and map
back to the id (:meth:`Catalog.by_series_uid`); an instance UID is its series UID with the section number
appended. Geometry follows Slicer's convention: 1 µm is 1 mm, positions are the image's origin and
direction (LPS, as ITK), so a region sits where it lies in its image.

Modality is MR: the shipped OHIF build opens its MONAI Label mode only for CT or MR studies
(``isValidMode`` of ``modes/monai-label``). These objects exist for viewers only; the image's real
modality is in the study and series descriptions.

Pixels keep their dtype up to 16 bits; wider integers and floats are mapped linearly onto uint16, with
RescaleSlope/Intercept giving back the stored values (to 1/65535 of the image's range).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from ..db.models import Image, Region
from ..errors import NotFound
from ..transforms.intensity import IntensityStats
from ..volumes.regions import Roi, voxel_size, zyx

NAMESPACE = uuid.UUID("6f0d8d2e-54a1-4c8e-9a43-0b1f0c1d5a11")  # axonseg's: never change (UIDs would move)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MODALITY = "MR"
TRANSFER_SYNTAX = ExplicitVRLittleEndian
WINDOW_PERCENTILES = (1.0, 99.5)
_NATIVE = {"uint8": (8, 0), "int8": (8, 1), "uint16": (16, 0), "int16": (16, 1)}


def uid_for(kind: str, key: str) -> str:
    """``2.25.<uuid5>``: the same UID for the same image or region id on every server."""
    return f"2.25.{uuid.uuid5(NAMESPACE, f'{kind}:{key}').int}"


@dataclass(frozen=True)
class PixelEncoding:
    """How stored voxels become DICOM pixels: ``stored = (value - intercept) / slope`` in ``dtype``."""

    dtype: np.dtype
    signed: bool
    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def of(cls, image: Image, stats: IntensityStats) -> PixelEncoding:
        name = np.dtype(image.dtype or "uint16").name
        if name in _NATIVE:
            return cls(np.dtype(name).newbyteorder("<"), bool(_NATIVE[name][1]))
        low, high = float(stats.minimum), float(stats.maximum)
        slope = (high - low) / 65535 if high > low else 1.0
        return cls(np.dtype("<u2"), False, slope, low)

    def encode(self, array: np.ndarray) -> np.ndarray:
        if self.slope == 1.0 and self.intercept == 0.0:
            return array.astype(self.dtype, copy=False)
        scaled = np.rint((array.astype(np.float64) - self.intercept) / self.slope)
        return np.clip(scaled, 0, 65535).astype(self.dtype)


@dataclass(frozen=True)
class SeriesView:
    """A region of an image (or the whole image) as a DICOM series."""

    study_uid: str
    series_uid: str
    number: int
    image: Image
    region: Region

    @property
    def region_id(self) -> str:
        return self.region.id

    @property
    def whole(self) -> bool:
        return tuple(self.region.shape) == tuple(self.image.shape or ())

    @property
    def shape(self) -> tuple[int, int, int]:
        return zyx(self.region.shape)

    @property
    def roi(self) -> Roi:
        return Roi.of(self.region)

    @property
    def spacing_um(self) -> tuple[float, float, float]:
        return voxel_size(self.image.voxel_size_um) or (1.0, 1.0, 1.0)

    @property
    def direction(self) -> np.ndarray:
        """Columns: the x, y and z axes of the voxel grid in LPS (ITK's direction matrix)."""
        return np.eye(3) if self.image.direction is None else np.asarray(self.image.direction, float)

    def sop_uid(self, section: int) -> str:
        return f"{self.series_uid}.{section + 1}"

    def section_of(self, sop_uid: str) -> int:
        """The z section of one of this series' instance UIDs; NotFound otherwise."""
        prefix, _, number = sop_uid.rpartition(".")
        if prefix != self.series_uid or not number.isdigit() or not 1 <= int(number) <= self.shape[0]:
            raise NotFound(f"no instance '{sop_uid}' in series '{self.series_uid}' ({self.region_id})")
        return int(number) - 1

    def position_mm(self, section: int) -> list[float]:
        """ImagePositionPatient of a section: the centre of its first voxel (1 µm = 1 mm)."""
        origin = np.array((self.image.origin_um or (0.0, 0.0, 0.0))[::-1], float)
        offset = np.array(self.roi.offset, float) + (section, 0, 0)
        return [round(float(v), 6) for v in origin + self.direction @ (offset[::-1] * np.array(self.spacing_um[::-1]))]

    @property
    def orientation(self) -> list[float]:
        return [round(float(v), 6) for v in np.concatenate([self.direction[:, 0], self.direction[:, 1]])]

    @property
    def description(self) -> str:
        z, y, x = self.spacing_um
        what = "whole image" if self.whole else f"region at {list(self.region.offset)}"
        return f"{self.region_id} ({what}; {self.image.modality or 'microscopy'}; voxel {x:g}x{y:g}x{z:g} um)"

    def series_dataset(self) -> Dataset:
        ds = Dataset()
        ds.SeriesInstanceUID = self.series_uid
        ds.Modality = MODALITY
        ds.SeriesNumber = self.number
        ds.SeriesDescription = self.description[:64]
        ds.SeriesDate = self.image.added_at.strftime("%Y%m%d")
        ds.NumberOfSeriesRelatedInstances = self.shape[0]
        return ds

    def instance_dataset(self, section: int, stats: IntensityStats) -> Dataset:
        """Every attribute of one section's instance but its pixels."""
        encoding = PixelEncoding.of(self.image, stats)
        ds = study_dataset(self.image, self.study_uid)
        for element in self.series_dataset():
            ds.add(element)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = self.sop_uid(section)
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.Manufacturer = "axonseg"
        ds.FrameOfReferenceUID = uid_for("frame", self.image.id)
        ds.InstanceNumber = section + 1
        ds.ImagePositionPatient = self.position_mm(section)
        ds.ImageOrientationPatient = self.orientation
        z, y, x = self.spacing_um
        ds.PixelSpacing = [y, x]  # row spacing, column spacing
        ds.SliceThickness = z
        ds.SpacingBetweenSlices = z
        ds.Rows, ds.Columns = self.shape[1], self.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        bits = encoding.dtype.itemsize * 8
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = int(encoding.signed)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = encoding.slope, encoding.intercept, "US"
        low, high = stats.bounds(WINDOW_PERCENTILES)
        ds.WindowCenter, ds.WindowWidth = round((low + high) / 2, 4), round(max(high - low, 1e-6), 4)
        ds.AvailableTransferSyntaxUID = TRANSFER_SYNTAX
        return ds

    def instance_json(self, section: int, stats: IntensityStats, bulk_uri: str | None = None) -> dict[str, Any]:
        """DICOM JSON of a section (its pixels as a BulkDataURI, fetched from the frames route)."""
        data = self.instance_dataset(section, stats).to_json_dict()
        if bulk_uri:
            data["7FE00010"] = {"vr": "OW", "BulkDataURI": bulk_uri}
        return data

    def part10(self, section: int, stats: IntensityStats, pixels: bytes) -> Dataset:
        """A whole DICOM instance of one section (WADO-RS instance retrieve)."""
        ds = self.instance_dataset(section, stats)
        del ds.AvailableTransferSyntaxUID
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = TRANSFER_SYNTAX
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.PixelData = pixels
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
        return ds


def study_dataset(image: Image, study_uid: str) -> Dataset:
    """The patient and study attributes of an image's study (the image id stands for the patient)."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.PatientName = image.id
    ds.PatientID = image.id
    ds.StudyID = image.id[:16]
    ds.AccessionNumber = ""
    ds.StudyDate = image.added_at.strftime("%Y%m%d")
    ds.StudyTime = image.added_at.strftime("%H%M%S")
    ds.StudyDescription = f"{image.id} ({image.modality or 'microscopy'}, {image.format or 'volume'})"[:64]
    return ds


@dataclass(frozen=True)
class StudyView:
    uid: str
    image: Image
    series: tuple[SeriesView, ...]

    def dataset(self) -> Dataset:
        ds = study_dataset(self.image, self.uid)
        ds.ModalitiesInStudy = [MODALITY]
        ds.NumberOfStudyRelatedSeries = len(self.series)
        ds.NumberOfStudyRelatedInstances = sum(s.shape[0] for s in self.series)
        return ds


class Catalog:
    """Every study and series the datastore holds, from the database (built per request: cheap)."""

    def __init__(self, images: list[Image], regions: list[Region], max_voxels: int):
        by_image: dict[str, list[Region]] = {}
        for region in regions:
            by_image.setdefault(region.image_id, []).append(region)
        self.studies: list[StudyView] = []
        self._series: dict[str, SeriesView] = {}
        for image in images:
            if not image.shape:
                continue
            study_uid = uid_for("image", image.id)
            parts = [r for r in by_image.get(image.id, []) if not r.whole]
            whole: Region | None = Region(
                id=image.id, image_id=image.id, offset=[0, 0, 0], shape=list(image.shape), whole=True
            )
            if parts and int(np.prod(image.shape)) > max_voxels:
                whole = None  # too large to view at once: its regions only
            listed = ([whole] if whole is not None else []) + parts
            series = tuple(
                SeriesView(study_uid, uid_for("region", r.id), n + 1, image, r) for n, r in enumerate(listed)
            )
            self.studies.append(StudyView(study_uid, image, series))
            self._series.update({s.series_uid: s for s in series})

    @classmethod
    def of(cls, db: Any, max_voxels: int) -> Catalog:
        return cls(db.images(), db.regions(), max_voxels)

    def study(self, uid: str) -> StudyView:
        for study in self.studies:
            if study.uid == uid:
                return study
        raise NotFound(f"no study '{uid}' in the datastore")

    def series(self, study_uid: str, series_uid: str) -> SeriesView:
        found = self._series.get(series_uid)
        if found is None or found.study_uid != study_uid:
            raise NotFound(f"no series '{series_uid}' in study '{study_uid}'")
        return found

    def by_series_uid(self, uid: str) -> SeriesView | None:
        return self._series.get(uid)


class FrameCache:
    """Encoded sections, least recently used dropped beyond ``max_bytes``. A miss reads the chunk-aligned
    slab of sections around it (one read per z chunk, never the whole series) and keeps each section."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._frames: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def frame(
        self, series: SeriesView, section: int, stats: IntensityStats, read: Callable[[Roi], np.ndarray]
    ) -> bytes:
        key = (series.series_uid, section)
        with self._lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        slab = dict(self._read_slab(series, section, stats, read))
        for z, data in slab.items():
            self._put((series.series_uid, z), data)
        return slab[section]

    def _read_slab(self, series: SeriesView, section: int, stats, read) -> list[tuple[int, bytes]]:
        roi = series.roi
        depth = int((series.image.chunks or [1])[0])
        section_bytes = roi.shape[1] * roi.shape[2] * PixelEncoding.of(series.image, stats).dtype.itemsize
        depth = max(1, min(depth, self.max_bytes // 8 // max(section_bytes, 1)))
        absolute = roi.offset[0] + section
        start = max(roi.offset[0], absolute - absolute % depth)
        stop = min(roi.offset[0] + roi.shape[0], start + depth)
        slab = read(Roi((start, roi.offset[1], roi.offset[2]), (stop - start, roi.shape[1], roi.shape[2])))
        encoding = PixelEncoding.of(series.image, stats)
        return [(start - roi.offset[0] + i, encoding.encode(slab[i]).tobytes()) for i in range(slab.shape[0])]

    def _put(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            if key in self._frames:
                return
            self._frames[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._frames) > 1:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= len(dropped)


_UID_LIST = re.compile(r"^\d+(\.\d+)+$")


def series_region(db: Any, image: str, max_voxels: int) -> str | None:
    """The region id a DICOM series UID stands for (what OHIF's panel sends as the image), else None."""
    if not _UID_LIST.match(image) or db.region(image) is not None:  # an image may be named "1.2"
        return None
    series = Catalog.of(db, max_voxels).by_series_uid(image)
    if series is None:
        raise NotFound(f"no series '{image}' in the datastore")
    return series.region_id


def uids_of(db: Any, region_id: str) -> dict[str, str]:
    """The study and series UIDs of a region (added to next-sample replies, which OHIF opens by study)."""
    region = db.region(region_id)
    if region is None:
        return {}
    return {"StudyInstanceUID": uid_for("image", region.image_id), "SeriesInstanceUID": uid_for("region", region.id)}
