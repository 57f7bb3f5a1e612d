"""Inference: ``POST /infer/{model}`` (MONAI Label's shape, which 3D Slicer and OHIF depend on) and
``POST /batch/infer/{model}``. The work runs in a worker; the handler only awaits it, so the event loop stays free.

    POST /infer/{model}        blocks until the job's result; 504 after infer_timeout_s
    POST /batch/infer/{model}  segments many images in the background (train queue)
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from requests_toolbelt import MultipartEncoder

from ..auth.identity import caller
from ..datastore import check_image_id
from ..dicomweb.series import series_region
from ..errors import InvalidRequest, NotFound
from ..infers.postprocessing import ON_IMAGE_GRID
from ..infers.request import parse_infer_request
from ..jobs.queues import INFER_QUEUE, TRAIN_QUEUE
from ..params import string_list
from ..uploads import remove_upload
from .common import Svc, parse_json_object, save_upload_file

router = APIRouter()


@router.post("/infer/{model}", summary="Run inference (queued to an infer worker; blocks until done)")
async def infer(
    svc: Svc,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: str | None = None,
):
    request = parse_json_object(params)
    max_voxels = svc.settings.max_voxels_in_memory
    region = await run_in_threadpool(series_region, svc.db, image, max_voxels) if image else None
    if region is not None:  # OHIF's panel sends the series UID; its segments are classes, not object ids
        image = region
        request.setdefault("label_values", "classes")
    parsed = parse_infer_request(svc.task_config(model).spec, request)  # bounds: 400 before anything is queued
    if label is not None and parsed.method not in ON_IMAGE_GRID:
        raise InvalidRequest(
            f"a label sent with an infer request is read as anchors by postprocessing 'trace', "
            f"not by '{parsed.method}'; send it to /datastore/label to save it"
        )
    if session_id:
        raise InvalidRequest("sessions are not supported by axonseg; send an image id or a file")
    if output not in (None, "image", "json", "all"):
        raise InvalidRequest(f"output must be image, json or all, not '{output}'")
    upload = anchors = None
    if file is not None:
        upload = await run_in_threadpool(save_upload_file, svc, file)
        image_path, name = upload, file.filename or "upload"
    elif image:
        if not await run_in_threadpool(svc.datastore.get_image_info, check_image_id(image)):
            raise NotFound(f"image '{image}' is not in the datastore")
        image_path, name = None, image
    else:
        raise InvalidRequest("send an image id (?image=...) or a file to segment")
    try:
        if label is not None:  # the worker reads and checks them against the image (read_anchors)
            anchors = await run_in_threadpool(save_upload_file, svc, label)
        await run_in_threadpool(svc.jobs.require_workers, INFER_QUEUE)
        job = await run_in_threadpool(
            svc.jobs.submit,
            "infer",
            description=f"inference '{model}' on '{name}'",
            meta={"image": image or None},
            model=model,
            request=parsed.to_dict(),  # parsed once, here: the worker rebuilds it unchecked
            client_id=caller().client_id(request.get("client_id")),
            image_id=None if upload else image,
            image_path=image_path,
            anchors_path=anchors,
            max_voxels_in_memory=max_voxels,
        )
        result = await svc.jobs.wait(job, svc.settings.infer_timeout_s)
    finally:
        for path in (upload, anchors):
            if path:
                await run_in_threadpool(remove_upload, path)
    result["params"]["job_id"] = job.id
    return _infer_response(result, output)


def _infer_response(result: dict[str, Any], output: str | None) -> Any:
    if output == "json":
        return result["params"]
    label = base64.b64decode(result["label"])  # the reply's NRRD file, base64 in the job's JSON result
    if output == "image":
        return Response(label, media_type="application/octet-stream")
    encoder = MultipartEncoder(
        fields={
            "params": (None, json.dumps(result["params"]), "application/json"),
            "image": (result["filename"], label, "application/octet-stream"),
        }
    )
    return Response(content=encoder.to_string(), media_type=encoder.content_type)


@router.post("/batch/infer/{model}", summary="Segment many datastore images in the background")
async def batch_infer(svc: Svc, model: str, params: dict | None = None):
    params = dict(params or {})
    raw = params.pop("images", None)
    named = None if raw is None else string_list("images", raw)  # "abc" is no list of three images
    parsed = parse_infer_request(svc.task_config(model).spec, params)  # 400 before anything is read or queued
    datastore = svc.datastore
    images = named
    if not images:
        images = await run_in_threadpool(lambda: datastore.get_unlabeled_images(structure=model))
    known = set(await run_in_threadpool(datastore.list_images))
    for image in images:
        check_image_id(image)
        if image not in known:
            raise NotFound(f"image '{image}' is not in the datastore")
    await run_in_threadpool(svc.jobs.require_workers, TRAIN_QUEUE)
    job = await run_in_threadpool(
        svc.jobs.submit,
        "batch_infer",
        description=f"batch inference '{model}' on {len(images)} images",
        model=model,
        image_ids=list(images),
        request=parsed.to_dict(),
    )
    return await run_in_threadpool(svc.jobs.describe, job)
