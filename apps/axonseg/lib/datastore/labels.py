"""Labels of regions, one per (structure, tag): every save is checked against its region, split by structure and
kept as a version (its own NRRD crop plus a ``label_versions`` row); the store's label array holds the latest."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.interfaces.datastore import DefaultLabelTag

from ..activelearning.leases import check_may_save
from ..configs.spec import StructureSpec
from ..db.models import Image, LabelVersion, Region
from ..db.store import Database
from ..errors import InvalidRequest, NotFound, VolumeError
from ..identifiers import check_name, safe_join
from ..params import LABEL_VALUE
from ..transforms.io import remove_path, write_volume
from ..volumes.formats import open_source
from ..volumes.regions import Roi, zyx
from ..volumes.store import VolumeStore
from .ingest import check_image_id
from .regions import Regions, image_shape, placed_volume

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
# Label info fields that name who saved a label: the server records them (client_id from the caller's identity).
SERVER_LABEL_FIELDS = frozenset({"user", "owner", "username", "created_by"})
MAX_TAG_LENGTH = 64


def structure_of(specs: dict[str, StructureSpec], name: str) -> str | None:
    """A structure by model name or label name (Slicer names segments after the label), any case."""
    key = str(name).strip().lower()
    for model, spec in specs.items():
        if key in (model.lower(), spec.label_name.lower()):
            return model
    return None


def array_name(structure: str, tag: str) -> str:
    """The store's label array of (structure, tag)."""
    return structure if tag == FINAL else f"{structure}-{tag}"


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def label_info(row: LabelVersion | None) -> dict[str, Any]:
    """What MONAI Label shows of a label version."""
    if row is None:
        return {}
    return {
        **(row.info or {}),
        "structure": row.structure,
        "version": row.version,
        "client_id": row.client_id,
        "checksum": row.checksum,
        "model_version": row.model_version_id,
        "ts": int(row.created_at.timestamp()),
        "name": os.path.basename(row.path),
    }


class Labels:
    """Saves and reads labels. ``on_final_label`` is called with ``(region_id, structure, label_info)`` after
    each final label version (the retrain trigger); its errors are logged and never lose the label."""

    def __init__(
        self,
        db: Database,
        store: VolumeStore,
        regions: Regions,
        specs: dict[str, StructureSpec],
        workdir: str,
        on_final_label: Callable[[str, str, dict[str, Any]], Any] | None = None,
    ):
        self.db = db
        self.store = store
        self.regions = regions
        self.specs = specs
        self.versions_path = os.path.join(workdir, "label_versions")
        self.locks_path = os.path.join(workdir, "locks")
        for folder in (self.versions_path, self.locks_path):
            os.makedirs(folder, exist_ok=True)
        self.on_final_label = on_final_label

    def _lock(self, image_id: str, structure: str, tag: str) -> FileLock:
        return FileLock(safe_join(self.locks_path, f"{image_id}.{structure}.{tag}.lock"))

    # --- saving -----------------------------------------------------------------------------
    def split_structures(self, array: np.ndarray, info: dict[str, Any], image: Image) -> dict[str, np.ndarray]:
        """Which structures a saved label map holds: Slicer's ``label_info`` segment names split it by
        value; otherwise the ``model``/``structure`` it names (or the image's only structure) gets it whole."""
        allowed = image.structures or list(self.specs)
        parts = self._split_segments(array, info.get("label_info"))
        if parts:
            return _allowed(parts, allowed, image)
        named = info.get("structure") or info.get("model")
        if named:
            structure = structure_of(self.specs, str(named))
            if structure is None:
                raise InvalidRequest(f"unknown structure '{named}'; known: {', '.join(self.specs)}")
            return _allowed({structure: array}, allowed, image)
        if len(allowed) == 1:
            return {allowed[0]: array}
        raise InvalidRequest(
            f"say which structure this label is: name its segments after one of {', '.join(allowed)} "
            '(Slicer\'s label_info) or send params {"model": NAME}'
        )

    def _split_segments(self, array: np.ndarray, segments: Any) -> dict[str, np.ndarray]:
        """The masks of Slicer's named segments (``label_info``), by structure; empty when none is named."""
        parts: dict[str, np.ndarray] = {}
        if not isinstance(segments, list):
            return parts
        for segment in segments:
            if not isinstance(segment, dict):
                continue
            structure = structure_of(self.specs, str(segment.get("name", "")))
            value = segment.get("idx", segment.get("id"))
            if structure is None or value is None:
                continue
            value = LABEL_VALUE.check("label_info idx", value, f" (segment '{structure}')")
            mask = (array == value).astype(np.uint32)
            parts[structure] = np.maximum(parts[structure], mask) if structure in parts else mask
        return parts

    def save_file(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check a label file against its region and store it as the newest version of each structure it holds."""
        region = self.regions.region(image_id)
        with open_source(label_filename, max_voxels_in_memory=self.regions.max_voxels_in_memory) as source:
            if tuple(source.shape) != tuple(region.shape):
                raise VolumeError(
                    f"label shape {tuple(source.shape)} does not match image '{image_id}' shape {tuple(region.shape)}"
                )
            array = source.read(Roi.whole(source.shape).slices)
        return self.save_array(image_id, array, label_tag, label_info)

    def save_array(self, image_id: str, array: np.ndarray, label_tag: str, label_info: dict[str, Any]) -> str:
        """A label map of a region (its shape) as the newest version of each structure it holds; Slicer's files
        and DICOM SEGs from a viewer both come here."""
        region, image = self.regions.region_and_image(image_id)
        tag = check_name(label_tag or FINAL, "label tag", MAX_TAG_LENGTH)
        info = dict(label_info or {})
        forged = sorted(set(info) & SERVER_LABEL_FIELDS)
        if forged:
            raise InvalidRequest(f"{', '.join(forged)} of a label are recorded by the server, not sent")
        if tuple(array.shape) != tuple(region.shape):
            raise VolumeError(
                f"label shape {tuple(array.shape)} does not match image '{image_id}' shape {tuple(region.shape)}"
            )
        if not LABEL_VALUE.holds(array):
            raise VolumeError(
                f"a label must hold whole, non-negative numbers (label values or object ids) up to {LABEL_VALUE.high}, "
                "what the uint32 label arrays hold"
            )
        parts = self.split_structures(array, info, image)
        if tag == FINAL:  # last: a request that is wrong anyway says so first
            check_may_save(self.db, region.id, info.get("client_id"))
        for structure, part in parts.items():
            self.write(region, image, structure, tag, part, info)
        return image_id

    def write(
        self, region: Region, image: Image, structure: str, tag: str, array: np.ndarray, info: dict[str, Any]
    ) -> LabelVersion:
        """One label version: its own file, its row, then the label array (which holds the latest)."""
        array = np.asarray(array, dtype=np.uint32)
        roi = Roi.of(region)
        folder = safe_join(self.versions_path, region.id, structure, tag)  # the names again, where they become a path
        os.makedirs(folder, exist_ok=True)
        kept = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.nrrd")
        write_volume(kept, placed_volume(image, roi, array))
        model = str(info["model"]) if info.get("model") in self.specs else structure
        active = self.db.active_model_version(model)  # the weights that predicted (or were corrected)
        recorded = {k: v for k, v in info.items() if k not in ("client_id", "label_info")}
        with self._lock(image.id, structure, tag):
            try:
                row = self.db.add_label_version(
                    region,
                    structure,
                    tag,
                    kept,
                    _checksum(array),
                    client_id=info.get("client_id"),
                    model_version_id=active.id if active else None,
                    info=recorded,
                )
            except NotFound:  # the image was removed meanwhile
                remove_path(kept)
                raise
            shape, chunks = image_shape(image), zyx(image.chunks or ())
            name = array_name(structure, tag)
            try:
                self.store.write_label(image.id, name, roi, array, shape, chunks, image.voxel_size_um)
            except BaseException:  # no row may name a version the label array does not hold
                self.db.remove_label_version(row.id)
                remove_path(kept)
                raise
        if tag == FINAL:
            self._after_final(region, structure, info)
        return row

    def _after_final(self, region: Region, structure: str, info: dict[str, Any]) -> None:
        self.db.release_lease(region.id)  # labelled now: the annotator's claim has served its purpose
        if self.on_final_label is not None:
            try:
                self.on_final_label(region.id, structure, info)
            except Exception:
                logger.exception(f"after saving the final {structure} label of '{region.id}'")

    # --- reading ----------------------------------------------------------------------------
    def read(self, region_id: str, structure: str, tag: str = FINAL) -> np.ndarray | None:
        """The latest label of a region for one structure, or None if it has none."""
        region, image = self.regions.region_and_image(region_id)
        if self.db.label_version(region.id, structure, tag) is None:
            return None
        roi = Roi.of(region)
        return self.store.read_label(image.id, array_name(structure, tag), roi)

    def latest_structure(self, region_id: str, tag: str) -> str | None:
        """The structure whose label of ``tag`` was saved last on the region."""
        row = self.db.latest_label_versions(region_id).get((region_id, tag))
        return row.structure if row is not None else None

    def uri(self, label_id: str, label_tag: str, structure: str | None = None) -> str:
        """The latest version's file for (region, structure, tag): the most recently saved structure by default."""
        check_image_id(label_id)
        structure = structure or self.latest_structure(label_id, label_tag)
        row = self.db.label_version(label_id, structure, label_tag) if structure else None
        return row.path if row is not None and os.path.exists(row.path) else ""

    def update_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        structure = self.latest_structure(label_id, label_tag)
        if structure is None:
            raise NotFound(f"image '{label_id}' has no '{label_tag}' label")
        self.db.update_label_version_info(label_id, structure, label_tag, info)

    def drop_versions(self, regions: list[Region]) -> None:
        """Drop the version files of a removed image's regions."""
        for region in regions:
            remove_path(os.path.join(self.versions_path, region.id))


def _allowed(parts: dict[str, np.ndarray], allowed: list[str], image: Image) -> dict[str, np.ndarray]:
    wrong = sorted(set(parts) - set(allowed))
    if wrong:
        raise InvalidRequest(
            f"image '{image.id}' is {image.modality or 'of unknown modality'}: it can carry "
            f"{', '.join(allowed)} labels, not {', '.join(wrong)}"
        )
    return parts
