"""Active-learning scores: queue a scoring job, read the stored scores.

POST /scoring/{method}   queue an active-learning scoring job (train queue)
GET  /scoring/{method}   stored scores under the model's active version, and what needs one
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..datastore import check_image_id
from ..jobs.queues import TRAIN_QUEUE
from ..params import string_list
from .common import Svc

router = APIRouter()


@router.post("/scoring/{method}", summary="Queue an active-learning scoring job (epistemic, entropy, tta, dice)")
async def score(svc: Svc, method: str, params: dict | None = None):
    """Body: ``model`` (default: the app's active-learning model), ``images`` (default: every image
    without a fresh score), and for epistemic and entropy ``samples`` and ``rate`` (MC dropout)."""
    params = dict(params or {})
    model = str(params.pop("model", None) or svc.active_learning_model)
    images = params.pop("images", None)
    images = None if images is None else string_list("images", images)  # "abc" is no list of three images
    for image in images or ():
        check_image_id(image)
    await run_in_threadpool(svc.jobs.require_workers, TRAIN_QUEUE)
    job_id = await run_in_threadpool(svc.scores.submit, model, method, images, params)
    if job_id is None:
        return {"id": None, "state": "finished", "detail": f"every image has a fresh '{method}' score"}
    job = await run_in_threadpool(svc.jobs.job, job_id)
    if job is None:  # finished and expired already
        return {"id": job_id, "state": "finished", "detail": "the scoring job has finished"}
    return await run_in_threadpool(svc.jobs.describe, job)


@router.get("/scoring/{method}", summary="Stored scores under a model's active version, highest first")
async def scores(svc: Svc, method: str, model: str | None = None):
    return await run_in_threadpool(svc.scores.report, model or svc.active_learning_model, method)
