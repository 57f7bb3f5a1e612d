"""Upgrade a work folder from the JSON datastore (axonseg before the chunked store) in place.

The earlier layout kept original files in the studies folder with MONAI Label's ``datastore_v2.json``,
labels in ``<studies>/labels/final/``, ROI blocks as NRRD images of their own and whole-volume NRRD
views in ``<workdir>/views/``. On the first start after the upgrade (the database has been migrated
to 0003 by then):

1. every image of the JSON that is not a block is ingested into the store from its original file
   (its database row is filled in, so its label history rows stay);
2. its latest final label is imported as version 1 of each region, under the structure its info
   names (``model``) or the image's only structure;
3. block images' rows go (their labels had been pasted into their parent's label, imported in 2);
4. the old views are deleted, and the JSON is renamed ``datastore_v2.json.migrated``.

Original files stay where they were. Failures are logged per image and leave the JSON in place,
so the next start tries again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import TYPE_CHECKING

from ..errors import AxonSegError, VolumeError
from .formats import open_source
from .regions import Roi

if TYPE_CHECKING:
    from ..datastore import MicroscopyDatastore

logger = logging.getLogger(__name__)

LEGACY_JSON = "datastore_v2.json"


def upgrade_workdir(datastore: MicroscopyDatastore, workdir: str) -> list[str]:
    """Ingest what a JSON datastore in the studies folder held; returns the upgraded image ids."""
    path = os.path.join(datastore.studies, LEGACY_JSON)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        objects = json.load(f).get("objects", {})
    logger.info(f"upgrading {len(objects)} images of {path} to the chunked store")
    upgraded: list[str] = []
    failed: list[str] = []
    hook, datastore.on_final_label = datastore.on_final_label, None  # imported labels are not new labels
    try:
        for image_id, obj in objects.items():
            _upgrade_object(datastore, image_id, obj, upgraded, failed)
    finally:
        datastore.on_final_label = hook
    shutil.rmtree(os.path.join(workdir, "views"), ignore_errors=True)
    os.makedirs(os.path.join(workdir, "views"), exist_ok=True)
    if not failed:
        os.replace(path, f"{path}.migrated")
    return upgraded


def _upgrade_object(
    datastore: MicroscopyDatastore, image_id: str, obj: dict, upgraded: list[str], failed: list[str]
) -> None:
    image = obj.get("image", {})
    info = image.get("info", {})
    if "parent" in info:  # an ROI block: now a region row of its parent
        datastore.db.remove_image(image_id)
        return
    try:
        _upgrade_image(datastore, image_id, image, obj.get("labels", {}))
        upgraded.append(image_id)
    except (AxonSegError, OSError) as e:
        logger.error(f"could not upgrade image '{image_id}': {e}")
        failed.append(image_id)


def _upgrade_image(datastore: MicroscopyDatastore, image_id: str, image: dict, labels: dict) -> None:
    existing = datastore.db.image(image_id)
    if existing is None or existing.storage_uri is None:
        original = os.path.join(datastore.studies, f"{image_id}{image.get('ext', '')}")
        info = image.get("info", {})
        params = {"dataset": info["dataset"]} if info.get("dataset") else {}
        datastore.add_image(image_id, original, params, replace_legacy=True)
    final = labels.get("final")
    if not final:
        return
    label_file = os.path.join(datastore.studies, "labels", "final", f"{image_id}{final.get('ext', '')}")
    if not os.path.exists(label_file):
        return
    row = datastore.db.image(image_id)
    if row is None:  # removed while upgrading
        raise VolumeError(f"'{image_id}' is no longer in the datastore; its final label is not imported")
    named = final.get("info", {}).get("model")
    structures = [named] if named in datastore.specs else (row.structures or [])
    if len(structures) != 1:
        logger.warning(f"'{image_id}': its final label names no structure; not imported (save it again in Slicer)")
        return
    with open_source(label_file, max_voxels_in_memory=datastore.max_voxels_in_memory) as source:
        for region in datastore.db.regions(image_id):
            if datastore.db.label_version(region.id, structures[0], "final") is not None:
                continue  # imported by an earlier, interrupted upgrade
            roi = Roi.of(region)
            array = source.read(roi.slices)
            info = {"client_id": final.get("info", {}).get("client_id"), "upgraded_from": label_file}
            datastore.write_label(region, row, structures[0], "final", array, info)
