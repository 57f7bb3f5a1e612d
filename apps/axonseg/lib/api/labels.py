"""Labels: saving (split by structure, each save a new version), downloading, and their history.

PUT  /datastore/label                    save a label (MONAI Label's route, which Slicer uses)
GET  /datastore/label                    a region's latest label (of one structure) as NRRD
HEAD /datastore/label, GET /datastore/label/info
GET  /labels/{image}/versions            every saved label version of a region (per structure)
GET  /labels/{image}/versions/{n}        one version's file
"""

from __future__ import annotations

import os

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse

from ..auth.identity import caller
from ..datastore import MAX_TAG_LENGTH, check_image_id
from ..errors import Forbidden, InvalidRequest, NotFound
from ..identifiers import check_name, check_version
from ..uploads import remove_upload
from .common import Svc, parse_json_object, save_upload_file

router = APIRouter()

# Plain ``def`` handlers: FastAPI runs them in its thread pool, so /info/ stays fast while labels are written.


@router.put("/datastore/label", summary="Save a label (split by structure, kept as a new version)")
def save_label(svc: Svc, image: str, params: str = Form("{}"), tag: str = "final", label: UploadFile = File(...)):
    check_image_id(image)
    tag = check_name(tag or "final", "label tag", MAX_TAG_LENGTH)
    if tag.casefold() == "original":
        raise Forbidden("tag 'original' is the model's own prediction: the server saves it with each inference")
    if tag.casefold() == "final" and tag != "final":  # one tag, not two that look alike
        raise InvalidRequest(f"write the tag 'final', not {tag!r}")
    info = parse_json_object(params)
    info["client_id"] = caller().client_id(info.get("client_id"))  # with auth on, the user; never a claim
    path = save_upload_file(svc, label)
    try:
        label_id = svc.datastore.save_label(image, path, tag, info)
    finally:
        remove_upload(path)
    return {"image": image, "label": label_id}


@router.get("/datastore/label", summary="Download a region's latest label (of one structure) as NRRD")
def label_file(svc: Svc, label: str, tag: str = "final", structure: str | None = None):
    if structure is not None:
        svc.task_config(structure)
    path = svc.datastore.get_label_uri(label, tag, structure)
    if not path:
        raise NotFound(f"image '{label}' has no '{tag}' {structure or ''} label")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{label}.nrrd")


@router.head("/datastore/label", summary="Check that a label exists")
def check_label(svc: Svc, image: str, tag: str):
    if not svc.datastore.get_label_uri(image, tag):
        raise NotFound(f"image '{image}' has no '{tag}' label")
    return {}


@router.get("/datastore/label/info", summary="The latest label version's info")
def label_info(svc: Svc, label: str, tag: str):
    return svc.datastore.get_label_info(label, tag)


@router.get("/labels/{image}/versions", summary="Every saved version of a region's labels")
def label_versions(svc: Svc, image: str, tag: str = "final", structure: str | None = None):
    """Versions of every structure (or of ``structure``), oldest first; ``structure`` None on rows saved
    before labels had structures (legacy)."""
    check_image_id(image)
    check_name(tag, "label tag", MAX_TAG_LENGTH)
    if structure is not None:
        svc.task_config(structure)
    return [
        {
            "version": r.version,
            "structure": r.structure,
            "tag": r.tag,
            "client_id": r.client_id,
            "created_at": r.created_at.isoformat(),
            "checksum": r.checksum,
            "model_version": r.model_version_id,
        }
        for r in svc.db.label_versions(image, tag, structure)
    ]


@router.get("/labels/{image}/versions/{version}", summary="Download one label version (NRRD of the region)")
def label_version_file(svc: Svc, image: str, version: str, tag: str = "final", structure: str | None = None):
    check_image_id(image)
    number = check_version(version)
    check_name(tag, "label tag", MAX_TAG_LENGTH)
    structure = structure or svc.datastore.latest_structure(image, tag)
    row = svc.db.label_version(image, structure, tag, number) if structure else None
    if row is None or not os.path.exists(row.path):
        raise NotFound(f"image '{image}' has no '{tag}' {structure or ''} label version {number}")
    return FileResponse(row.path, filename=f"{image}.{structure}.v{number}.nrrd")
