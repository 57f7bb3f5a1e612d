"""The microscopy datastore: MONAI Label's local datastore, extended for microscopy formats.

- Accepts TIFF, HDF5, Zarr, N5, NRRD and NIfTI; originals are kept byte for byte.
- Slicer picks a reader by file extension and cannot open most of these, so ``get_image_uri``
  serves a NRRD *view* (same array, real voxel size) written once next to the datastore.
  NRRD/NIfTI originals are served as they are.
- Every upload and label is read and checked before it is stored, and files appear atomically,
  so a bad or interrupted request leaves nothing behind.
- With a database, images are recorded there and every label save is kept as a new version
  (file under ``versions_path``, row in ``label_versions``); the datastore's label file is the latest.
- The datastore JSON is re-read under its file lock before every write, so processes sharing it
  (API server, workers) never overwrite each other's updates.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from .activelearning.blocks import Block, crop, grid, needs_blocks, paste
from .db.store import Database, file_checksum
from .errors import InvalidRequest, NotFound, VolumeError
from .transforms.io import (
    FORMATS,
    Volume,
    copy_atomic,
    read_volume,
    remove_path,
    volume_extension,
    write_volume,
)

logger = logging.getLogger(__name__)

IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SERVED_FORMATS = ("nrrd", "nifti")  # formats 3D Slicer opens with real geometry


def check_image_id(image_id: str) -> str:
    """Reject ids that are not plain names (``../../etc/passwd``, absolute paths, empty)."""
    if not isinstance(image_id, str) or not IMAGE_ID.match(image_id) or ".." in image_id:
        raise InvalidRequest(
            f"invalid image id {image_id!r}: use letters, digits, '.', '_' or '-' (no path separators), "
            "at most 128 characters"
        )
    return image_id


def _geometry(volume: Volume) -> dict[str, Any]:
    return {"shape": list(volume.shape), "spacing_um": list(volume.spacing), "dtype": str(volume.array.dtype)}


class MicroscopyDatastore(LocalDatastore):
    """Local datastore for microscopy volumes.

    Args:
        datastore_path: folder holding the original images (and ``labels/``).
        views_path: folder for the NRRD views served to Slicer.
        dataset: default dataset path inside HDF5/Zarr/N5 uploads (found automatically if None).
        db: where images and label versions are recorded (None: no history, as in stock MONAI Label).
        versions_path: folder for every saved label version (required with ``db``).
        on_final_label: called with ``(image_id, label_info)`` after a final label is stored (the
            app's retrain trigger); its errors are logged, never lose the label.
        block_size: split volumes larger than this (z, y, x voxels) into ROI blocks that are images of
            their own (``lib.activelearning.blocks``); the parent is then neither handed out nor trained
            on, and its final label is assembled from its blocks' labels (unlabelled blocks read 0).
    """

    def __init__(
        self,
        datastore_path: str,
        views_path: str,
        dataset: str | None = None,
        db: Database | None = None,
        versions_path: str | None = None,
        on_final_label: Callable[[str, dict[str, Any]], Any] | None = None,
        block_size: tuple[int, int, int] | None = None,
    ):
        self._block_size = tuple(int(b) for b in block_size) if block_size else None
        self._views_path = views_path
        self._on_final_label = on_final_label
        self._dataset = dataset
        self._db = db
        self._versions_path = versions_path
        os.makedirs(views_path, exist_ok=True)
        super().__init__(datastore_path, extensions=[f"*{ext}" for ext in FORMATS], auto_reload=False)
        # One lock object: re-entrant within a thread (a block's label write-back nests in a save),
        # exclusive across threads and processes.
        self._lock = FileLock(self._lock_file)

    def record_all_images(self) -> None:
        """Describe every image in the database (images dropped into the folder are found at start-up),
        and split the large ones into blocks if that has not happened yet."""
        for image_id in self.list_images():
            info = self._datastore.objects[image_id].image.info
            self._record_image(image_id, info)
            if self._block_size and "parent" not in info and "blocks" not in info:
                if "shape" not in info:  # found on disk: describing it reads it once (and writes its view)
                    self.get_image_uri(image_id)
                    info = self._datastore.objects[image_id].image.info
                self._split_if_large(image_id, tuple(info["shape"]))

    def _record_image(self, image_id: str, info: dict[str, Any]) -> None:
        if self._db is not None:
            self._db.record_image(
                image_id,
                self._original_uri(image_id),
                info.get("format"),
                info.get("shape"),
                info.get("spacing_um"),
            )

    def _config_changed(self) -> bool:
        path = self._datastore_config_path
        return os.path.exists(path) and os.stat(path).st_mtime != self._config_ts

    def _refresh(self) -> None:
        """Pick up what other processes wrote (a worker's batch labels) before answering a read."""
        if self._config_changed():
            with self._lock:
                self._reload_locked()

    def json(self):
        self._refresh()
        return super().json()

    def status(self) -> dict[str, Any]:
        self._refresh()
        return super().status()

    def get_labeled_images(self, *args: Any, **kwargs: Any) -> list[str]:
        self._refresh()
        return super().get_labeled_images(*args, **kwargs)

    def get_unlabeled_images(self, *args: Any, **kwargs: Any) -> list[str]:
        """Unlabelled images, without volumes split into blocks (their blocks are listed instead)."""
        self._refresh()
        return [i for i in super().get_unlabeled_images(*args, **kwargs) if not self._has_blocks(i)]

    def _has_blocks(self, image_id: str) -> bool:
        obj = self._datastore.objects.get(image_id)
        return bool(obj and obj.image.info.get("blocks"))

    def block_of(self, image_id: str) -> Block | None:
        """The block ``image_id`` is, or None for an ordinary image."""
        obj = self._datastore.objects.get(image_id)
        info = obj.image.info if obj else {}
        if "parent" not in info:
            return None
        return Block(info["parent"], tuple(info["offset"]), tuple(info["shape"]))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        self._refresh()
        return super().get_label_uri(label_id, label_tag)

    def _reload_locked(self) -> None:
        """Re-read the datastore JSON if another process changed it; call with the file lock held."""
        if self._config_changed():
            ts = os.stat(self._datastore_config_path).st_mtime  # before reading: a later write is seen next time
            with open(self._datastore_config_path) as f:
                self._datastore = LocalDatastoreModel.model_validate_json(f.read())
            self._datastore.base_path = self._datastore_path
            self._config_ts = ts

    # --- reading ---------------------------------------------------------------------------------

    def _original_uri(self, image_id: str) -> str:
        return super().get_image_uri(image_id)

    def _served_path(self, original: str, image_id: str) -> str:
        if FORMATS.get(volume_extension(original)) in SERVED_FORMATS:
            return original
        return os.path.join(self._views_path, f"{image_id}.nrrd")

    def get_image_uri(self, image_id: str) -> str:
        """Path of the file served for ``image_id`` (a NRRD view for non-Slicer formats), or "".

        Writes a missing or stale view, and records shape and voxel size the first time an image
        that was found on disk (not uploaded) is served.
        """
        original = self._original_uri(image_id)
        if not original:
            return ""
        served = self._served_path(original, image_id)
        volume = None
        if served != original and (not os.path.exists(served) or os.path.getmtime(served) < os.path.getmtime(original)):
            volume = read_volume(original, self._dataset_of(image_id))
            write_volume(served, volume)
        if "shape" not in self._datastore.objects[image_id].image.info:
            if volume is None:
                volume = read_volume(served)
            info = {"format": FORMATS[volume_extension(original)], **_geometry(volume)}
            self.update_image_info(image_id, info)
            self._record_image(image_id, info)
        return served

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Image info with ``path``/``name`` of the *served* file (MONAI Label's next-sample reply
        copies these, and Slicer chooses its reader by ``name``). Never reads the volume, so that
        strategies can list every image cheaply.
        """
        info = super().get_image_info(image_id)
        if not info:
            return info
        served = self._served_path(info["path"], image_id)
        return {**info, "original_path": info["path"], "path": served, "name": os.path.basename(served)}

    def _dataset_of(self, image_id: str) -> str | None:
        obj = self._datastore.objects.get(image_id)
        return (obj.image.info.get("dataset") if obj else None) or self._dataset

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Image/label pairs for training; images are the served files, so geometry matches labels."""
        self._refresh()
        items = super().datalist(full_path=True)
        # A split volume's label is assembled from its blocks, which train as images of their own.
        items = [i for i in items if not self._has_blocks(self._to_id(os.path.basename(i["image"]))[0])]
        for item in items:
            image_id = self._to_id(os.path.basename(item["image"]))[0]
            item["image"] = self.get_image_uri(image_id)
        return items

    # --- writing ---------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Validate and store an uploaded volume; raises a 4xx error and stores nothing if bad."""
        ext = volume_extension(image_filename)
        if not ext:
            raise VolumeError(
                f"unsupported file type '{os.path.basename(image_filename)}'; expected one of: {', '.join(FORMATS)}"
            )
        image_id = check_image_id(image_id or self._to_id(os.path.basename(image_filename))[0])
        if image_id in self._datastore.objects:
            raise InvalidRequest(f"image '{image_id}' already exists; delete it first or upload under another id")
        image_info = dict(image_info or {})
        volume = read_volume(image_filename, image_info.get("dataset") or self._dataset)
        dest = os.path.join(self._datastore.image_path(), f"{image_id}{ext}")
        with self._lock:
            self._reload_locked()
            try:
                copy_atomic(image_filename, dest)
                image_info.update(
                    ts=int(time.time()),
                    name=os.path.basename(dest),
                    format=volume.source_format,
                    dataset=volume.meta.get("dataset", image_info.get("dataset")),
                    **_geometry(volume),
                )
                self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=image_info, ext=ext))
                if FORMATS[ext] not in SERVED_FORMATS:
                    write_volume(os.path.join(self._views_path, f"{image_id}.nrrd"), volume)
                self._update_datastore_file(lock=False)
            except Exception:
                self._datastore.objects.pop(image_id, None)
                remove_path(dest)
                remove_path(os.path.join(self._views_path, f"{image_id}.nrrd"))
                raise
        self._record_image(image_id, image_info)
        logger.info(f"Added image {image_id}: {volume.source_format} {volume.shape} spacing {volume.spacing} µm")
        if "parent" not in image_info:
            self._split_if_large(image_id, volume.shape, volume)
        return image_id

    def _split_if_large(self, image_id: str, shape: tuple[int, ...], volume: Volume | None = None) -> list[str]:
        """Add a block image per ROI block of a volume larger than ``block_size``; returns their ids."""
        if not self._block_size or not needs_blocks(shape, self._block_size):
            return []
        volume = volume or read_volume(self._original_uri(image_id), self._dataset_of(image_id))
        blocks = grid(image_id, volume.shape, self._block_size)
        with tempfile.TemporaryDirectory() as folder:
            for block in blocks:
                if block.id not in self._datastore.objects:
                    path = write_volume(os.path.join(folder, f"{block.id}.nrrd"), crop(volume, block))
                    self.add_image(block.id, path, {"parent": image_id, "offset": list(block.offset)})
        self.update_image_info(image_id, {"blocks": [b.id for b in blocks], "block_size": list(self._block_size)})
        logger.info(f"Split {image_id} {volume.shape} into {len(blocks)} blocks of {self._block_size}")
        return [b.id for b in blocks]

    def save_label(
        self,
        image_id: str,
        label_filename: str,
        label_tag: str,
        label_info: dict[str, Any],
    ) -> str:
        """Validate a label against its image (same shape) and store it atomically as the newest version.

        ``label_info`` may carry ``client_id`` and ``model`` (MONAI Label's clients send them); they are
        recorded with the version.
        """
        check_image_id(image_id)
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise NotFound(f"image '{image_id}' is not in the datastore")
        ext = volume_extension(label_filename)
        if FORMATS.get(ext) not in SERVED_FORMATS + ("tiff", "hdf5"):
            raise VolumeError(
                f"labels must be NRRD, NIfTI, TIFF or HDF5 files, got '{os.path.basename(label_filename)}'"
            )
        label = read_volume(label_filename)
        self.get_image_uri(image_id)  # records the image's shape if it was never described
        image_shape = tuple(obj.image.info["shape"])
        if label.shape != image_shape:
            raise VolumeError(f"label shape {label.shape} does not match image '{image_id}' shape {image_shape}")
        label_info = dict(label_info or {})
        self._store_label(image_id, label_filename, label_tag, label_info)
        if label_tag == DefaultLabelTag.FINAL.value:
            block = self.block_of(image_id)
            if block is not None:
                self._write_back(block, label.array, label_info)
            if self._on_final_label is not None:
                try:
                    self._on_final_label(image_id, label_info)
                except Exception:
                    logger.exception(f"after saving the final label of '{image_id}'")
        return image_id

    def _store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> None:
        """Keep a checked label as the newest version of (image, tag): history row, then the file."""
        ext = volume_extension(label_filename)
        label_dir = self._datastore.label_path(label_tag)
        os.makedirs(label_dir, exist_ok=True)
        dest = os.path.join(label_dir, f"{image_id}{ext}")
        with self._lock:
            self._reload_locked()
            obj = self._datastore.objects[image_id]
            if self._db is not None:
                label_info["version"] = self._record_label_version(image_id, label_filename, label_tag, ext, label_info)
            copy_atomic(label_filename, dest)
            # A label saved under another extension before must not shadow this one.
            old = obj.labels.get(label_tag)
            if old and old.ext != ext:
                remove_path(os.path.join(label_dir, f"{image_id}{old.ext}"))
            info = dict(label_info, ts=int(time.time()), name=os.path.basename(dest))
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)

    def _write_back(self, block: Block, block_label: np.ndarray, label_info: dict[str, Any]) -> None:
        """Paste a block's final label into its parent's final label (zeros where no block is labelled yet)."""
        parent = read_volume(self.get_image_uri(block.parent))
        # Read, paste and store under one lock: two blocks of a parent saved at once must both land.
        with self._lock, tempfile.TemporaryDirectory() as folder:
            self._reload_locked()
            current = self.get_label_uri(block.parent, DefaultLabelTag.FINAL.value)
            base = read_volume(current).array if current else np.zeros(parent.shape, np.uint8)
            assembled = paste(base.astype(np.uint8), block_label.astype(np.uint8), block)
            path = write_volume(
                os.path.join(folder, f"{block.parent}.nrrd"), dataclasses.replace(parent, array=assembled)
            )
            info = {"client_id": label_info.get("client_id"), "from_block": block.id, "offset": list(block.offset)}
            self._store_label(block.parent, path, DefaultLabelTag.FINAL.value, info)

    def _record_label_version(self, image_id: str, label_filename: str, tag: str, ext: str, info: dict) -> int:
        """Keep this save's file and record it; returns its version number."""
        assert self._db is not None and self._versions_path is not None
        folder = os.path.join(self._versions_path, image_id, tag)
        os.makedirs(folder, exist_ok=True)
        kept = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}{ext}")
        copy_atomic(label_filename, kept)
        if self._db.image(image_id) is None:  # e.g. the database was reset under a live datastore
            self._record_image(image_id, self._datastore.objects[image_id].image.info)
        model = info.get("model")
        active = self._db.active_model_version(model) if isinstance(model, str) else None
        row = self._db.add_label_version(
            image_id,
            tag,
            kept,
            file_checksum(kept),
            client_id=info.get("client_id"),
            model_version_id=active.id if active else None,
            info={k: v for k, v in info.items() if k not in ("client_id",)},
        )
        if tag == DefaultLabelTag.FINAL.value:
            self._db.release_lease(image_id)  # labelled now: the annotator's claim has served its purpose
        return row.version

    def remove_image(self, image_id: str) -> None:
        check_image_id(image_id)
        if image_id not in self._datastore.objects:
            raise NotFound(f"image '{image_id}' is not in the datastore")
        # LocalDatastore removes files only; Zarr/N5 originals are folders, gone before it refreshes.
        remove_path(self._original_uri(image_id))
        remove_path(os.path.join(self._views_path, f"{image_id}.nrrd"))
        super().remove_image(image_id)
        if self._db is not None:
            self._db.remove_image(image_id)
