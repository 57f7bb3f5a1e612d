"""The datastore: MONAI Label's interface (``interface``) over ingest, region reads and labels (one module each)."""

from .ingest import (
    DEFAULT_MAX_IMAGE_VOXELS,
    DEFAULT_REGION_SIZE,
    MODALITIES,
    SERVER_FIELDS,
    UPLOAD_OPTIONS,
    check_image_id,
    guess_modality,
)
from .interface import MicroscopyDatastore
from .labels import MAX_TAG_LENGTH, SERVER_LABEL_FIELDS
from .regions import DEFAULT_MAX_VOXELS_IN_MEMORY, RegionData, RegisteredSources

__all__ = [
    "DEFAULT_MAX_IMAGE_VOXELS",
    "DEFAULT_MAX_VOXELS_IN_MEMORY",
    "DEFAULT_REGION_SIZE",
    "MAX_TAG_LENGTH",
    "MODALITIES",
    "SERVER_FIELDS",
    "SERVER_LABEL_FIELDS",
    "UPLOAD_OPTIONS",
    "MicroscopyDatastore",
    "RegionData",
    "RegisteredSources",
    "check_image_id",
    "guess_modality",
]
