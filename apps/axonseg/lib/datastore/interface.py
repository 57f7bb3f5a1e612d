"""MONAI Label's ``Datastore`` interface over the chunked volume store (voxels) and SQL (the one index).

- **Images** are volumes in the store (``lib.volumes.store``): ingested into OME-Zarr by streaming,
  or Zarr/N5 registered in place from a folder listed in ``AXONSEG_VOLUME_ROOTS`` (``ingest``). The database
  row holds what the server knows of them; geometry is the server's, clients only add metadata.
- **Regions** are what MONAI Label calls images: a small image is one region under its own id, a
  large one is tiled into regions (rows, not copies). Next sample leases a region, scores are per
  region, and ``GET /datastore/image`` serves a region as a NRRD crop cut from the chunks on demand
  (cached within ``view_cache_mb``), placed at its physical position (``regions``).
- **Labels** belong to a structure: one uint32 label array per (image, structure, tag) aligned with
  the regions, written only where a region's label lands. Every save is also a version (its own
  NRRD crop plus a ``label_versions`` row: who, when, model version, checksum); the array holds the
  latest. A label with several structures (Slicer's ``label_info`` segment names) is split by name (``labels``).
- Every normalisation uses the image's intensity statistics, computed once at ingest.

Nothing here loads a whole volume, except to serve a whole image or read a file format that cannot
be streamed (NRRD/NIfTI), both bounded by ``max_voxels_in_memory``. This class answers MONAI Label's
interface and the app's queries, and hands the work to ``Ingest``, ``Regions`` and ``Labels``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore

from ..auth.identity import caller
from ..configs.spec import StructureSpec
from ..db.models import Image, LabelVersion, Region
from ..db.store import Database
from ..errors import InvalidRequest
from ..transforms.intensity import IntensityStats
from ..transforms.io import remove_path
from ..volumes.outputs import VolumeOutput
from ..volumes.regions import Roi
from ..volumes.store import VolumeStore
from .ingest import (
    DEFAULT_MAX_IMAGE_VOXELS,
    DEFAULT_REGION_SIZE,
    SERVER_FIELDS,
    Ingest,
    check_image_id,
    structures_for,
)
from .labels import FINAL, Labels, label_info, structure_of
from .regions import DEFAULT_MAX_VOXELS_IN_MEMORY, RegionData, Regions, RegisteredSources


class MicroscopyDatastore(Datastore):
    """Args:
    studies: the folder MONAI Label was started on; volume files found there are ingested at start-up.
    workdir: holds ``volumes/`` (the store), ``views/`` (NRRD crop cache) and ``label_versions/``.
    db: the index.
    specs: the structures, by model name (their label names and modalities).
    region_size: regions of large images, (z, y, x) voxels (rounded up to whole chunks); None: no tiling.
    max_voxels_in_memory: the most voxels a request may make the server hold at once (whole-image
        views, NRRD/NIfTI files); above it requests are refused with 413.
    max_image_voxels: the largest image accepted (a tiny HDF5 file can declare a huge dataset).
    volume_roots: folders whose Zarr/N5 volumes may be registered in place (read-only).
    dataset: default dataset inside HDF5/Zarr/N5 files.
    on_final_label: called with ``(region_id, structure, label_info)`` after each final label version
        (the retrain trigger); its errors are logged and never lose the label.
    view_cache_mb: bound on the NRRD crops kept in ``views/``.
    sources: the opened readers of registered volumes; a process that makes many datastores (a worker)
        passes one it keeps, so each volume is opened once.
    """

    def __init__(
        self,
        studies: str,
        workdir: str,
        db: Database,
        specs: dict[str, StructureSpec],
        region_size: tuple[int, int, int] | None = DEFAULT_REGION_SIZE,
        max_voxels_in_memory: int = DEFAULT_MAX_VOXELS_IN_MEMORY,
        max_image_voxels: int = DEFAULT_MAX_IMAGE_VOXELS,
        volume_roots: Iterable[str] = (),
        dataset: str | None = None,
        on_final_label: Callable[[str, str, dict[str, Any]], Any] | None = None,
        view_cache_mb: float = 2048,
        sources: RegisteredSources | None = None,
    ):
        self._name = "axonseg"
        self._description = "Microscopy volumes in a chunked store, indexed in SQL"
        self.studies = os.path.abspath(studies)
        self.db = db
        self.specs = specs
        self.store = VolumeStore(os.path.join(workdir, "volumes"))
        self.views_path = os.path.join(workdir, "views")
        os.makedirs(self.views_path, exist_ok=True)
        self.max_voxels_in_memory = int(max_voxels_in_memory)
        self.sources = sources or RegisteredSources()
        size = (int(region_size[0]), int(region_size[1]), int(region_size[2])) if region_size else None
        self.ingest = Ingest(
            db,
            self.store,
            self.studies,
            specs,
            size,
            self.max_voxels_in_memory,
            int(max_image_voxels),
            volume_roots,
            dataset,
        )
        self.regions = Regions(
            db, self.store, self.views_path, self.max_voxels_in_memory, int(view_cache_mb * 1e6), self.sources
        )
        self.labels = Labels(db, self.store, self.regions, specs, workdir, on_final_label)

    @property
    def on_final_label(self) -> Callable[[str, str, dict[str, Any]], Any] | None:
        """The retrain trigger (``lib.volumes.upgrade`` unsets it while it imports old labels)."""
        return self.labels.on_final_label

    @on_final_label.setter
    def on_final_label(self, hook: Callable[[str, str, dict[str, Any]], Any] | None) -> None:
        self.labels.on_final_label = hook

    # --- MONAI Label's small interface ------------------------------------------------------
    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str) -> None:
        self._description = description

    def refresh(self) -> None:
        """Nothing to re-read: every process reads the database."""

    # --- structures -------------------------------------------------------------------------
    def structures_for(self, modality: str | None) -> list[str]:
        """The structures an image of ``modality`` may carry (all of them when the modality is unknown)."""
        return structures_for(self.specs, modality)

    def structure_of(self, name: str) -> str | None:
        """A structure by model name or label name (Slicer names segments after the label), any case."""
        return structure_of(self.specs, name)

    # --- adding and removing images ---------------------------------------------------------
    def add_image(
        self,
        image_id: str,
        image_filename: str,
        image_info: dict[str, Any],
        replace_legacy: bool = False,
        upload: bool = False,
    ) -> str:
        """See :meth:`Ingest.add_image`."""
        return self.ingest.add_image(image_id, image_filename, image_info, replace_legacy, upload)

    def register_volume(self, image_id: str, path: str, dataset: str | None = None, modality: str | None = None) -> str:
        """Use a Zarr/N5 volume inside one of ``volume_roots`` where it is, read-only."""
        return self.ingest.register_volume(image_id, path, dataset, modality)

    def add_found_files(self) -> list[str]:
        """Ingest the volume files in the studies folder that are not in the store yet (start-up)."""
        return self.ingest.add_found_files()

    def remove_image(self, image_id: str) -> None:
        """Remove an image (by its id or any of its regions') with its labels, history and job outputs."""
        region = self.db.region(check_image_id(image_id))
        image = self.regions.image(region.image_id if region else image_id)
        regions = self.db.regions(image.id)
        self.sources.forget(image)
        outputs = [VolumeOutput(job.folder) for job in self.db.volume_jobs(image_id=image.id)]
        self.db.remove_image(image.id)
        self.store.remove(image.id)
        for output in outputs:
            output.remove()
        if os.path.dirname(image.original_path) == self.studies:  # found there: it would be added again
            remove_path(image.original_path)
        self.regions.drop_views(regions)
        self.labels.drop_versions(regions)

    # --- images and regions -----------------------------------------------------------------
    def list_images(self) -> list[str]:
        return [r.id for r in self.db.regions()]

    def region_and_image(self, region_id: str) -> tuple[Region, Image]:
        return self.regions.region_and_image(region_id)

    def is_region(self, image_id: str) -> bool:
        return self.regions.is_region(image_id)

    def stats(self, image: Image) -> IntensityStats:
        """See :meth:`Regions.stats`."""
        return self.regions.stats(image)

    def read(self, image: Image, roi: Roi) -> np.ndarray:
        """Raw voxels of ``roi`` (only the chunks it touches are read)."""
        return self.regions.read(image, roi)

    def read_region(self, region_id: str, context: tuple[int, int, int] = (0, 0, 0)) -> RegionData:
        """A region (or a whole image) with ``context`` voxels around it, clipped to the image."""
        return self.regions.read_region(region_id, context)

    def get_image_uri(self, image_id: str) -> str:
        """A NRRD file of the region (or of a whole image within ``max_voxels_in_memory``), from the cache."""
        return self.regions.view(image_id)

    def get_image(self, image_id: str, params=None) -> Any:
        with open(self.get_image_uri(image_id), "rb") as f:
            return f.read()

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Client metadata, then the server's fields over it (a client cannot change geometry)."""
        region = self.db.region(check_image_id(image_id))
        image = self.db.image(region.image_id if region else image_id)
        if image is None:
            return {}
        info = self._image_info(image_id, region, image)
        if region is None:
            info["regions"] = len(self.db.regions(image.id))
        return info

    def _image_info(self, image_id: str, region: Region | None, image: Image) -> dict[str, Any]:
        info = {**(image.info or {}), **((region.info or {}) if region else {})}
        server = {
            "id": image_id,
            "image": image.id,
            "name": f"{image_id}.nrrd",
            "format": image.format,
            "dtype": image.dtype,
            "voxel_size_um": image.voxel_size_um,
            "spacing_um": image.voxel_size_um or [1.0, 1.0, 1.0],
            "modality": image.modality,
            "structures": image.structures,
            "registered": image.registered,
        }
        if region is not None:
            server.update(region=region.id, shape=region.shape, offset=region.offset)
            if not region.whole:
                server["parent"] = image.id
        else:
            server.update(shape=image.shape, offset=[0, 0, 0])
        if caller().may("admin"):  # where the crop lies on the server: for admins (Slicer on the same machine)
            server["path"] = self.regions.view_path(image_id)
        else:
            info.pop("path", None)
        return {**info, **server}

    def last_served(self, strategy: str) -> dict[str, int]:
        """``{region: time}`` of the regions MONAI Label's next sample last handed out with ``strategy``."""
        out = {}
        for region_id, info in self.db.region_infos().items():
            ts = ((info or {}).get("strategy") or {}).get(strategy, {}).get("ts")
            if ts is not None:
                out[region_id] = int(ts)
        return out

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge client metadata; the server's fields are refused."""
        refused = sorted(set(info) & SERVER_FIELDS)
        if refused:
            raise InvalidRequest(f"{', '.join(refused)} are set by the server and cannot be changed")
        region = self.db.region(check_image_id(image_id))
        if region is not None:
            self.db.update_region_info(region.id, info)
        else:
            self.regions.image(image_id)
            self.db.update_image_info(image_id, info)

    # --- labels -----------------------------------------------------------------------------
    def split_structures(self, array: np.ndarray, label_info: dict[str, Any], image: Image) -> dict[str, np.ndarray]:
        """See :meth:`Labels.split_structures`."""
        return self.labels.split_structures(array, label_info, image)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check a label file against its region and store it as the newest version of each structure it holds."""
        return self.labels.save_file(image_id, label_filename, label_tag, label_info)

    def save_label_array(self, image_id: str, array: np.ndarray, label_tag: str, label_info: dict[str, Any]) -> str:
        """A label map of a region (its shape) as the newest version of each structure it holds; Slicer's files
        and DICOM SEGs from a viewer both come here."""
        return self.labels.save_array(image_id, array, label_tag, label_info)

    def write_label(
        self, region: Region, image: Image, structure: str, tag: str, array: np.ndarray, info: dict[str, Any]
    ) -> LabelVersion:
        """One label version: its own file, its row, then the label array (which holds the latest)."""
        return self.labels.write(region, image, structure, tag, array, info)

    def read_label(self, region_id: str, structure: str, tag: str = FINAL) -> np.ndarray | None:
        """The latest label of a region for one structure, or None if it has none."""
        return self.labels.read(region_id, structure, tag)

    def latest_structure(self, region_id: str, tag: str) -> str | None:
        """The structure whose label of ``tag`` was saved last on the region."""
        return self.labels.latest_structure(region_id, tag)

    def get_label_uri(self, label_id: str, label_tag: str, structure: str | None = None) -> str:
        """The latest version's file for (region, structure, tag): the most recently saved structure by default."""
        return self.labels.uri(label_id, label_tag, structure)

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        path = self.get_label_uri(label_id, label_tag)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return {tag: uri for tag in (FINAL, "original") if (uri := self.get_label_uri(image_id, tag))}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return self.get_label_uri(image_id, tag)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return label_info(self.db.latest_label_versions(label_id).get((label_id, label_tag)))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self.labels.update_info(label_id, label_tag, info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise InvalidRequest("label versions are kept; save a corrected label instead (GET /labels/{image}/versions)")

    # --- queries (active learning, training, listings) --------------------------------------
    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Regions with a label of ``label_tag`` (final by default) of any of ``labels`` (structures)."""
        labelled = self.db.labelled_regions(label_tag or FINAL)
        wanted = set(labels) if labels else None
        return [r for r in self.list_images() if r in labelled and (wanted is None or wanted & set(labelled[r]))]

    def get_unlabeled_images(
        self, label_tag: str | None = None, labels: list[str] | None = None, structure: str | None = None
    ) -> list[str]:
        """Regions without a final label (of ``structure``, among images that may carry it)."""
        labelled = self.db.labelled_regions(label_tag or FINAL, structure)
        if structure is None:
            return [r for r in self.list_images() if r not in labelled]
        allowed = {i.id for i in self.db.images() if structure in (i.structures or [])}
        return [r.id for r in self.db.regions() if r.image_id in allowed and r.id not in labelled]

    def training_regions(self, structure: str, tag: str = FINAL) -> list[str]:
        """Regions with a ``structure`` label, on images of a modality that structure suits, in id order."""
        labelled = self.db.labelled_regions(tag, structure)
        allowed = {i.id for i in self.db.images() if structure in (i.structures or [])}
        return sorted(r.id for r in self.db.regions() if r.id in labelled and r.image_id in allowed)

    def datalist(self) -> list[dict[str, Any]]:
        """Labelled regions as MONAI Label lists them; ``image``/``label`` are ids (crops are made on demand)."""
        labelled = self.db.labelled_regions(FINAL)
        return [
            {"image": r, "label": r, "structures": sorted(labelled[r])} for r in self.list_images() if r in labelled
        ]

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        raise InvalidRequest("a whole-dataset archive is not offered for chunked volumes; download regions instead")

    def status(self) -> dict[str, Any]:
        regions = self.list_images()
        labelled = self.db.labelled_regions(FINAL)
        return {
            "total": len(regions),
            "completed": sum(1 for r in regions if r in labelled),
            "images": len(self.db.images()),
            "label_tags": {FINAL: len(labelled)},
        }

    def json(self) -> dict[str, Any]:
        """Every region with its info and latest labels, in three queries (Slicer asks after each next sample)."""
        images = {image.id: image for image in self.db.images()}
        latest = self.db.latest_label_versions()
        objects = {}
        for region in self.db.regions():
            labels = {
                tag: {"info": label_info(row), "ext": ".nrrd"}
                for tag in (FINAL, "original")
                if (row := latest.get((region.id, tag))) is not None
            }
            info = self._image_info(region.id, region, images[region.image_id])
            objects[region.id] = {"image": {"info": info, "ext": ".nrrd"}, "labels": labels}
        return {"name": self._name, "description": self._description, "objects": objects}
