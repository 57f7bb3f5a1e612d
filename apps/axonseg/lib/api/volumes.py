"""Whole volumes: registering a Zarr/N5 volume in place, and segmenting a volume block by block on the queue.

POST /volumes/register                   use a Zarr/N5 volume in place (read-only)
POST /volumes/{image}/segment/{model}    202: a volume job (GET /jobs/{id} follows it)
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..auth.identity import caller
from ..datastore import check_image_id
from ..errors import InvalidRequest
from ..jobs.queues import TRAIN_QUEUE
from .common import Svc

router = APIRouter()


@router.post("/volumes/register", summary="Register a Zarr/N5 volume in place (read-only)")
def register_volume(svc: Svc, params: dict):
    """Body: ``path`` (inside a folder of AXONSEG_VOLUME_ROOTS), ``image`` (id), optional ``dataset``,
    ``modality``."""
    if not isinstance(params.get("path"), str) or not params["path"] or not params.get("image"):
        raise InvalidRequest("send the volume's 'path' and the 'image' id to register it under")
    if any(ord(c) < 32 for c in params["path"]):
        raise InvalidRequest("the volume's 'path' holds a control character (a NUL or a newline)")
    image = svc.datastore.register_volume(
        str(params["image"]), str(params["path"]), params.get("dataset"), params.get("modality")
    )
    return svc.datastore.get_image_info(image)


@router.post(
    "/volumes/{image}/segment/{model}", status_code=202, summary="Segment a whole volume block by block (queued)"
)
async def segment_volume(svc: Svc, image: str, model: str, params: dict | None = None):
    """Body: the model's infer options (post-processing and its options), optional ``roi``
    (``{"offset": [z, y, x], "shape": [z, y, x]}``), ``block_shape``, ``sw_batch_size``, ``amp``. The same
    request again resumes the job (only blocks not done are run); ``GET /jobs/{id}`` follows it."""
    check_image_id(image)
    await run_in_threadpool(svc.jobs.require_workers, TRAIN_QUEUE)
    job = await run_in_threadpool(svc.volume_jobs.submit, image, model, dict(params or {}), caller().name)
    return await run_in_threadpool(svc.volume_jobs.describe, job.id)
