"""Images in the datastore, in MONAI Label's shapes (3D Slicer and scripts use them).

GET    /datastore/             images and labels (output=stats|train|all)
PUT    /datastore/image        upload an image (ingested into the chunked store)
DELETE /datastore/image        remove an image with its regions and labels
HEAD   /datastore/image        check that an image exists (optionally its checksum)
GET    /datastore/image        download a region (or small image) as NRRD
GET    /datastore/image/info, PUT /datastore/image/info
"""

from __future__ import annotations

import hashlib
import os
from enum import Enum

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse

from ..auth.identity import caller
from ..datastore import check_image_id
from ..errors import InvalidRequest, NotFound
from ..uploads import check_quota, remove_upload
from .common import Svc, parse_json_object, save_upload_file

router = APIRouter()

# Plain ``def`` handlers: FastAPI runs them in its thread pool, so /info/ stays fast while volumes are ingested
# or cut into crops.


class Listing(str, Enum):
    stats = "stats"
    train = "train"
    all = "all"


@router.get("/datastore/", summary="Images and labels of the datastore")
def datastore_summary(svc: Svc, output: Listing | None = None):
    if output == Listing.all:
        return svc.datastore.json()
    if output == Listing.train:
        return svc.datastore.datalist()
    return svc.datastore.status()


@router.put("/datastore/", include_in_schema=False)
@router.put("/datastore/image", summary="Upload an image (ingested into the chunked store)")
def add_image(svc: Svc, image: str | None = None, params: str = Form("{}"), file: UploadFile = File(...)):
    info = parse_json_object(params)
    owner = caller().client_id(info.get("client_id"))
    quota = svc.settings.upload_quota_bytes
    check_quota(svc.db.uploaded_bytes(owner), file.size or 0, quota, owner)
    path = save_upload_file(svc, file)
    try:
        size = os.path.getsize(path)
        check_quota(svc.db.uploaded_bytes(owner), size, quota, owner)
        image_id = svc.datastore.add_image(image or "", path, info, upload=True)
        svc.db.record_upload(image_id, owner, size)
        return {"image": image_id}
    finally:
        remove_upload(path)


@router.delete("/datastore/", include_in_schema=False)
@router.delete("/datastore/image", summary="Remove an image with its regions and labels")
def remove_image(svc: Svc, id: str):
    svc.datastore.remove_image(id)
    return {}


@router.head("/datastore/image", summary="Check that an image exists")
def check_image(svc: Svc, image: str, check_sum: str | None = None):
    """``check_sum``: ``[ALGO:]digest`` (SHA256 unless named), as the Slicer plugin sends it."""
    path = _image_file(svc, image)
    if check_sum:
        algo, _, digest = check_sum.rpartition(":")
        algo = algo.upper() or "SHA256"
        if algo not in ("SHA256", "SHA512", "MD5"):
            raise InvalidRequest(f"check_sum names {algo!r}; use SHA256, SHA512 or MD5")
        if digest.lower() != _digest(path, algo):
            raise NotFound("Image NOT Found (checksum failed)")
    return {}


@router.get("/datastore/image", summary="Download a region (or small image) as NRRD")
def image_file(svc: Svc, image: str):
    path = _image_file(svc, image)
    return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(path))


@router.get("/datastore/image/info", summary="Image info: the server's geometry over client metadata")
def image_info(svc: Svc, image: str):
    return svc.datastore.get_image_info(image)


@router.put("/datastore/image/info", summary="Add client metadata to an image (geometry is the server's)")
def update_image_info(svc: Svc, image: str, info: str = Form("{}")):
    svc.datastore.update_image_info(image, parse_json_object(info))
    return svc.datastore.get_image_info(image)


def _digest(path: str, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_file(svc: Svc, image: str) -> str:
    path = svc.datastore.get_image_uri(check_image_id(image))
    if not path or not os.path.isfile(path):
        raise NotFound("Image NOT Found")
    return path
