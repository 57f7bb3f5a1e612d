"""HTTP endpoints that replace MONAI Label's in-process ones with queued jobs, plus queue and history views.

Request and reply shapes of ``/infer`` and ``/train`` are MONAI Label's (3D Slicer depends on them);
the work runs in a worker, and handlers only await it, so the event loop stays free.

    POST   /infer/{model}             blocks until the job's result; 504 after infer_timeout_s
    POST   /train/{model}, /train/    200 with the task, 429 if training is busy and enqueue is false
    GET    /train/                    the running run, else the latest (all=true: every run;
                                      check_if_running=true: 200 with the running run, else 404)
    DELETE /train/                    stops the running training inside its worker
    GET    /train/{model}/learning_curve.png   loss and validation scores of the trainer's latest run
    GET    /encoders/                 self-supervised pretrained encoders (ssl_pretrain), per structure
    POST   /batch/infer/{model}       segments many images in the background (train queue)
    GET    /jobs/                     queue lengths, job ids by state, live workers
    GET    /jobs/workers              live workers
    GET    /jobs/{id}                 one job: state, position in its queue, progress, error
                                      (a volume job: blocks done/total per step, voxels/s, ETA)
    DELETE /jobs/{id}                 cancel
    POST   /volumes/{image}/segment/{model}   202: segment a whole volume block by block (lib.jobs.volume)
    GET    /labels/{image}/versions   every saved label version of a region (per structure)
    GET    /labels/{image}/versions/{n}   one version's file (latest is also /datastore/label)
    *      /datastore/..., /activelearning/{strategy}   MONAI Label's, run in the thread pool
    POST   /volumes/register          use a Zarr/N5 volume in place
    *      /proxy/dicom/...           the DICOMweb bridge OHIF reads through (lib.dicomweb.routes)
    GET    /leases/                   live annotator leases
    GET    /models/{model}/versions   every set of weights the model has served
    POST   /models/{model}/versions/{id}/activate   serve an earlier version (roll back)
    POST   /scoring/{method}          queue an active-learning scoring job (train queue)
    GET    /scoring/{method}          stored scores under the model's active version, and what needs one
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from monailabel.endpoints import activelearning as al_endpoints
from monailabel.endpoints import datastore as ds_endpoints
from monailabel.interfaces.utils.app import app_instance
from requests_toolbelt import MultipartEncoder

from .auth.identity import caller
from .datastore import MAX_TAG_LENGTH, check_image_id
from .db.models import ModelVersion, TrainingRun
from .db.store import file_checksum
from .dicomweb.routes import uids_of, viewer_image
from .errors import Forbidden, InvalidRequest, NotFound, error_from_status
from .identifiers import check_name, check_version
from .infers.postprocessing import ON_IMAGE_GRID
from .infers.request import parse_infer_request
from .jobs.client import describe_worker
from .jobs.queues import INFER_QUEUE, TRAIN_QUEUE
from .jobs.training import FINAL
from .jobs.volume import is_volume_job
from .params import string_list
from .trainers.report import plot_learning_curve
from .uploads import check_quota, remove_upload, save_upload

if TYPE_CHECKING:
    from main import AxonSegApp

router = APIRouter()


def _app() -> AxonSegApp:
    return app_instance()


def _parse_params(params: str | None) -> dict[str, Any]:
    try:
        value = json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"params must be a JSON object: {e}") from e
    except RecursionError:
        raise InvalidRequest("params nest objects or lists too deeply") from None
    if not isinstance(value, dict):
        raise InvalidRequest("params must be a JSON object")
    return value


# --- inference -----------------------------------------------------------------------------------
@router.post("/infer/{model}", summary="Run inference (queued to an infer worker; blocks until done)")
async def infer(
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: str | None = None,
):
    app = _app()
    request = _parse_params(params)
    region = await run_in_threadpool(viewer_image, image) if image else None
    if region is not None:  # OHIF's panel sends the series UID; its segments are classes, not object ids
        image = region
        request.setdefault("label_values", "classes")
    parsed = parse_infer_request(app.task_config(model).spec, request)  # bounds: 400 before anything is queued
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
        upload = await run_in_threadpool(_save_upload, app, file)
        image_path, name = upload, file.filename or "upload"
    elif image:
        if not await run_in_threadpool(app.datastore().get_image_info, check_image_id(image)):
            raise NotFound(f"image '{image}' is not in the datastore")
        image_path, name = None, image
    else:
        raise InvalidRequest("send an image id (?image=...) or a file to segment")
    try:
        if label is not None:  # the worker reads and checks them against the image (read_anchors)
            anchors = await run_in_threadpool(_save_upload, app, label)
        jobs = app.jobs
        await run_in_threadpool(jobs.require_workers, INFER_QUEUE)
        job = await run_in_threadpool(
            jobs.submit,
            "infer",
            description=f"inference '{model}' on '{name}'",
            meta={"image": image or None},
            model=model,
            request=parsed.to_dict(),
            client_id=caller().client_id(request.get("client_id")),
            image_id=None if upload else image,
            image_path=image_path,
            anchors_path=anchors,
            max_voxels_in_memory=app.datastore().max_voxels_in_memory,
        )
        result = await jobs.wait(job, app.infer_timeout_s)
    finally:
        for path in (upload, anchors):
            if path:
                await run_in_threadpool(remove_upload, path)
    if "error" in result:
        raise error_from_status(result.get("status_code", 400), result["error"])
    result["params"]["job_id"] = job.id
    return _infer_response(result, output)


def _save_upload(app: AxonSegApp, file: UploadFile) -> str:
    return save_upload(file, app.conf["workdir"], app.min_free_bytes)


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


# --- training ------------------------------------------------------------------------------------
def _train_task(run: TrainingRun) -> dict[str, Any]:
    """A training run in the shape MONAI Label's /train/ returns (Slicer polls ``status``).

    JSON-safe whatever was stored: a NaN loss of a diverging run (or a NaN param stored before params had
    bounds) becomes null, where it would make every GET /train/ a 500."""
    epochs = _finite(run.epochs or [])
    details = []
    for e in epochs[-20:] if isinstance(epochs, list) else []:
        e = e if isinstance(e, dict) else {}
        loss = e.get("loss")
        loss = f"{loss:.4f}" if isinstance(loss, (int, float)) and not isinstance(loss, bool) else loss
        details.append(f"epoch {e.get('epoch')}/{e.get('total_epochs')} loss {loss}")
    return _finite(
        {
            "id": run.job_id,
            "name": "train",
            "model": run.model,
            "status": run.status,
            "request": {"model": run.model, **(run.params or {})},
            "start_ts": _fmt(run.started_at),
            "end_ts": _fmt(run.finished_at),
            "epochs": epochs,
            "details": details,
            "error": run.error,
            "model_version": run.model_version_id,
            "encoder_version": run.encoder_version_id,
            "gate": run.gate,  # why the run's weights were published or not
        }
    )


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity inside it as None (JSON replies refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fmt(ts: datetime | None) -> str | None:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else None


@router.post("/train/{model}", summary="Start training a model (queued to a train worker)")
async def train_model(model: str, params: dict | None = None, enqueue: bool = False):
    runs = await run_in_threadpool(_app().training.submit, [model], dict(params or {}), enqueue)
    return _train_task(runs[0])


@router.post("/train/", summary="Train every model, one after another")
async def train_all(params: dict | None = None):
    """Body: options for every model, and under a model's name options for it alone (``{"axon": {...}}``)."""
    app = _app()
    runs = await run_in_threadpool(app.training.submit_all, list(app.task_configs), dict(params or {}))
    return {run.model: {"result": _train_task(run), "detail": None} for run in runs}


@router.get("/train/", summary="Status of training (MONAI Label shape)")
async def train_status(all: bool = False, check_if_running: bool = False):
    app = _app()

    def read():
        # The running run first (what Slicer's progress bar follows), then queued ones, then the latest.
        active = app.training.active()
        if check_if_running:
            return _train_task(active[0]) if active else None
        runs = [app.training.sync(run) for run in app.db.training_runs(limit=None if all else 1)]
        if all:
            return [_train_task(run) for run in reversed(runs)]
        return _train_task((active or runs)[0]) if runs else None

    result = await run_in_threadpool(read)
    if result is None:
        raise NotFound("No Train Tasks are currently Running" if check_if_running else "No Train Tasks Found")
    return result


@router.delete("/train/", summary="Stop training inside its worker")
async def train_stop():
    app = _app()
    runs = await run_in_threadpool(app.training.active)
    for run in runs:
        await run_in_threadpool(app.jobs.cancel, run.job_id)
    if not runs:
        latest = await run_in_threadpool(app.db.training_runs)
        return _train_task(latest[0]) if latest else {}
    for _ in range(200):  # the training loop notices within one iteration
        run = await run_in_threadpool(app.training.sync, await run_in_threadpool(app.db.training_run, runs[0].job_id))
        if run.status in FINAL:
            break
        await asyncio.sleep(0.05)
    return _train_task(run)


@router.get("/train/{model}/learning_curve.png", summary="Learning curve of the trainer's latest run (PNG)")
async def learning_curve(model: str):
    trainer = _app().trainers.get(model)
    if trainer is None:
        raise NotFound(f"unknown trainer '{model}'; available trainers: {', '.join(_app().trainers)}")
    stats = await run_in_threadpool(trainer.stats)
    if not stats.get("history"):
        raise NotFound(f"'{model}' has not been trained here yet; POST /train/{model} starts a run")

    def draw() -> bytes:
        png = io.BytesIO()
        plot_learning_curve(png, stats["history"], f"{model}: {trainer.description} ({stats['status']})")
        return png.getvalue()

    return Response(await run_in_threadpool(draw), media_type="image/png")


# --- model versions ------------------------------------------------------------------------------
def _version(row: ModelVersion) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "source": row.source,
        "file": os.path.basename(row.path),
        "checksum": row.checksum,
        "metrics": row.metrics,
        "active": row.active,
        "created_at": _fmt(row.created_at),
    }


@router.get("/models/{model}/versions", summary="Every set of weights the model has served")
async def model_versions(model: str):
    app = _app()
    app.task_config(model)
    return [_version(row) for row in await run_in_threadpool(app.db.model_versions, model)]


@router.post("/models/{model}/versions/{version_id}/activate", summary="Serve an earlier version (roll back)")
async def activate_model_version(model: str, version_id: str):
    """Workers pick the file up at their next job; the version becomes the active one in the database."""
    app = _app()
    config = app.task_config(model)
    version_id = check_version(version_id, "version id")  # type: ignore[assignment]

    def activate() -> ModelVersion:
        row = next((v for v in app.db.model_versions(model) if v.id == version_id), None)
        if row is None:
            raise NotFound(f"'{model}' has no version {version_id}; GET /models/{model}/versions lists them")
        if not os.path.isfile(row.path) or file_checksum(row.path) != row.checksum:
            # e.g. a version recorded before versions were archived: its file has been overwritten since
            raise NotFound(f"version {version_id} of '{model}' cannot be served: {row.path} is gone or changed")
        config.weights.serve(row.path)
        return app.db.register_model_version(model, row.path, row.source)

    return _version(await run_in_threadpool(activate))


# --- pretrained encoders -------------------------------------------------------------------------
@router.get("/encoders/", summary="Self-supervised pretrained encoders (from ssl_pretrain)")
async def encoder_versions(structure: str | None = None):
    """Each can be given to a model's trainer as ``pretrained_encoder`` (its id)."""
    app = _app()
    if structure is not None:
        app.task_config(structure)
    rows = await run_in_threadpool(app.db.encoder_versions, structure)
    return [
        {
            "id": row.id,
            "structure": row.structure,
            "modality": row.modality,
            "task": row.task,
            "file": os.path.basename(row.path),
            "checksum": row.checksum,
            "metrics": row.metrics,
            "params": row.params,
            "created_at": _fmt(row.created_at),
        }
        for row in rows
    ]


# --- active-learning scores ----------------------------------------------------------------------
@router.post("/scoring/{method}", summary="Queue an active-learning scoring job (epistemic, entropy, tta, dice)")
async def score(method: str, params: dict | None = None):
    """Body: ``model`` (default: the app's active-learning model), ``images`` (default: every image
    without a fresh score), and for epistemic and entropy ``samples`` and ``rate`` (MC dropout)."""
    app = _app()
    params = dict(params or {})
    model = str(params.pop("model", None) or app.active_learning_model)
    images = params.pop("images", None)
    images = None if images is None else string_list("images", images)  # "abc" is no list of three images
    for image in images or ():
        check_image_id(image)
    await run_in_threadpool(app.jobs.require_workers, TRAIN_QUEUE)
    job_id = await run_in_threadpool(app.scores.submit, model, method, images, params)
    if job_id is None:
        return {"id": None, "state": "finished", "detail": f"every image has a fresh '{method}' score"}
    return app.jobs.describe(app.jobs.job(job_id))


@router.get("/scoring/{method}", summary="Stored scores under a model's active version, highest first")
async def scores(method: str, model: str | None = None):
    app = _app()
    return await run_in_threadpool(app.scores.report, model or app.active_learning_model, method)


# --- batch inference -----------------------------------------------------------------------------
@router.post("/batch/infer/{model}", summary="Segment many datastore images in the background")
async def batch_infer(model: str, params: dict | None = None):
    app = _app()
    params = dict(params or {})
    images = params.pop("images", None)
    images = None if images is None else string_list("images", images)  # "abc" is no list of three images
    parsed = parse_infer_request(app.task_config(model).spec, params)  # bounds: 400 before anything is read or queued
    datastore = app.datastore()
    images = images or await run_in_threadpool(datastore.get_unlabeled_images, structure=model)
    known = set(await run_in_threadpool(datastore.list_images))
    for image in images:
        check_image_id(image)
        if image not in known:
            raise NotFound(f"image '{image}' is not in the datastore")
    await run_in_threadpool(app.jobs.require_workers, TRAIN_QUEUE)
    job = await run_in_threadpool(
        app.jobs.submit,
        "batch_infer",
        description=f"batch inference '{model}' on {len(images)} images",
        model=model,
        image_ids=list(images),
        request=parsed.to_dict(),
    )
    return await run_in_threadpool(app.jobs.describe, job)


# --- queue visibility ----------------------------------------------------------------------------
@router.get("/jobs/", summary="Queue lengths, job ids by state, live workers")
async def jobs_overview():
    return await run_in_threadpool(_app().jobs.overview, caller().may("admin"))


@router.get("/jobs/workers", summary="Live workers and what they run")
async def jobs_workers():
    app = _app()
    machine = caller().may("admin")  # host names and pids are for admins
    return [describe_worker(w, machine) for w in await run_in_threadpool(app.jobs.workers)]


@router.get("/jobs/{job_id}", summary="One job: state, queue position, progress, error")
async def job_detail(job_id: str):
    app = _app()
    check_name(job_id, "job id")
    if is_volume_job(job_id):
        return await run_in_threadpool(app.volume_jobs.describe, job_id)
    job = await run_in_threadpool(app.jobs.job, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}' (finished jobs are kept for a limited time)")
    return await run_in_threadpool(app.jobs.describe, job)


@router.delete("/jobs/{job_id}", summary="Cancel a queued job or stop a running one (its owner or an admin)")
async def job_cancel(job_id: str):
    app = _app()
    check_name(job_id, "job id")
    if is_volume_job(job_id):
        row = await run_in_threadpool(app.db.volume_job, job_id)
        _check_owner(job_id, row.owner if row else None)
        job = await run_in_threadpool(app.volume_jobs.cancel, job_id)
        return await run_in_threadpool(app.volume_jobs.describe, job.id)
    job = await run_in_threadpool(app.jobs.job, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}'")
    _check_owner(job_id, job.meta.get("owner"))
    await run_in_threadpool(app.jobs.cancel, job_id)
    return await run_in_threadpool(app.jobs.describe, job)


def _check_owner(job_id: str, owner: str | None) -> None:
    if not caller().owns(owner):
        who = owner or "the server"
        raise Forbidden(f"job '{job_id}' was submitted by '{who}'; only they or an admin may cancel it")


# --- label history and leases --------------------------------------------------------------------
@router.get("/labels/{image}/versions", summary="Every saved version of a region's labels")
def label_versions(image: str, tag: str = "final", structure: str | None = None):
    """Versions of every structure (or of ``structure``), oldest first; ``structure`` None on rows saved
    before labels had structures (legacy)."""
    app = _app()
    check_image_id(image)
    check_name(tag, "label tag", MAX_TAG_LENGTH)
    if structure is not None:
        app.task_config(structure)
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
        for r in app.db.label_versions(image, tag, structure)
    ]


@router.get("/labels/{image}/versions/{version}", summary="Download one label version (NRRD of the region)")
def label_version_file(image: str, version: str, tag: str = "final", structure: str | None = None):
    app = _app()
    check_image_id(image)
    number = check_version(version)
    check_name(tag, "label tag", MAX_TAG_LENGTH)
    structure = structure or app.datastore().latest_structure(image, tag)
    row = app.db.label_version(image, structure, tag, number) if structure else None
    if row is None or not os.path.exists(row.path):
        raise NotFound(f"image '{image}' has no '{tag}' {structure or ''} label version {number}")
    return FileResponse(row.path, filename=f"{image}.{structure}.v{number}.nrrd")


# --- the datastore, off the event loop ----------------------------------------------------------
# MONAI Label's own handlers are ``async def`` around blocking reads and writes; these run the same
# functions in the thread pool (FastAPI runs plain ``def`` handlers there), so /info/ stays fast while
# volumes are ingested, cut into crops or labels written.
@router.get("/datastore/", summary="Images and labels of the datastore")
def datastore_summary(output: ds_endpoints.ResultType | None = None):
    return ds_endpoints.datastore(output)


@router.put("/datastore/", include_in_schema=False)
@router.put("/datastore/image", summary="Upload an image (ingested into the chunked store)")
def datastore_add_image(image: str | None = None, params: str = Form("{}"), file: UploadFile = File(...)):
    app = _app()
    info = _parse_params(params)
    owner = caller().client_id(info.get("client_id"))
    check_quota(app.db.uploaded_bytes(owner), file.size or 0, app.upload_quota_bytes, owner)
    path = _save_upload(app, file)
    try:
        size = os.path.getsize(path)
        check_quota(app.db.uploaded_bytes(owner), size, app.upload_quota_bytes, owner)
        image_id = app.datastore().add_image(image or "", path, info, upload=True)
        app.db.record_upload(image_id, owner, size)
        return {"image": image_id}
    finally:
        remove_upload(path)


@router.delete("/datastore/", include_in_schema=False)
@router.delete("/datastore/image", summary="Remove an image with its regions and labels")
def datastore_remove_image(id: str):
    return ds_endpoints.remove_image(id, None)


@router.head("/datastore/image", summary="Check that an image exists")
def datastore_check_image(image: str, check_sum: str | None = None):
    return ds_endpoints.download_image(image, check_only=True, check_sum=check_sum)


@router.get("/datastore/image", summary="Download a region (or small image) as NRRD")
def datastore_image(image: str):
    return ds_endpoints.download_image(image)


@router.get("/datastore/image/info", summary="Image info: the server's geometry over client metadata")
def datastore_image_info(image: str):
    return ds_endpoints.get_image_info(image)


@router.put("/datastore/image/info", summary="Add client metadata to an image (geometry is the server's)")
def datastore_update_image_info(image: str, info: str = Form("{}")):
    app = _app()
    app.datastore().update_image_info(image, _parse_params(info))
    return app.datastore().get_image_info(image)


@router.put("/datastore/label", summary="Save a label (split by structure, kept as a new version)")
def datastore_save_label(image: str, params: str = Form("{}"), tag: str = "final", label: UploadFile = File(...)):
    app = _app()
    check_image_id(image)
    tag = check_name(tag or "final", "label tag", MAX_TAG_LENGTH)
    if tag.casefold() == "original":
        raise Forbidden("tag 'original' is the model's own prediction: the server saves it with each inference")
    if tag.casefold() == "final" and tag != "final":  # one tag, not two that look alike
        raise InvalidRequest(f"write the tag 'final', not {tag!r}")
    info = _parse_params(params)
    info["client_id"] = caller().client_id(info.get("client_id"))  # with auth on, the user; never a claim
    path = _save_upload(app, label)
    try:
        label_id = app.datastore().save_label(image, path, tag, info)
    finally:
        remove_upload(path)
    return {**(app.on_save_label(image, label_id) or {}), "image": image, "label": label_id}


@router.get("/datastore/label", summary="Download a region's latest label (of one structure) as NRRD")
def datastore_label(label: str, tag: str = "final", structure: str | None = None):
    app = _app()
    if structure is not None:
        app.task_config(structure)
    path = app.datastore().get_label_uri(label, tag, structure)
    if not path:
        raise NotFound(f"image '{label}' has no '{tag}' {structure or ''} label")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{label}.nrrd")


@router.head("/datastore/label", summary="Check that a label exists")
def datastore_check_label(image: str, tag: str):
    if not _app().datastore().get_label_uri(image, tag):
        raise NotFound(f"image '{image}' has no '{tag}' label")
    return {}


@router.get("/datastore/label/info", summary="The latest label version's info")
def datastore_label_info(label: str, tag: str):
    return ds_endpoints.get_label_info(label, tag)


@router.post("/activelearning/{strategy}", summary="Next sample: a region chosen by the strategy, leased to you")
def next_sample(strategy: str, params: dict | None = None):
    """MONAI Label's reply, plus the region's DICOM UIDs (OHIF's panel opens the study it names)."""
    result = al_endpoints.sample(strategy, params, None)
    return {**result, **uids_of(result["id"])} if isinstance(result, dict) and result.get("id") else result


@router.post("/volumes/register", summary="Register a Zarr/N5 volume in place (read-only)")
def register_volume(params: dict):
    """Body: ``path`` (inside a folder of AXONSEG_VOLUME_ROOTS), ``image`` (id), optional ``dataset``,
    ``modality``."""
    app = _app()
    if not isinstance(params.get("path"), str) or not params["path"] or not params.get("image"):
        raise InvalidRequest("send the volume's 'path' and the 'image' id to register it under")
    if any(ord(c) < 32 for c in params["path"]):
        raise InvalidRequest("the volume's 'path' holds a control character (a NUL or a newline)")
    image = app.datastore().register_volume(
        str(params["image"]), str(params["path"]), params.get("dataset"), params.get("modality")
    )
    return app.datastore().get_image_info(image)


@router.post(
    "/volumes/{image}/segment/{model}", status_code=202, summary="Segment a whole volume block by block (queued)"
)
async def segment_volume(image: str, model: str, params: dict | None = None):
    """Body: the model's infer options (post-processing and its options), optional ``roi``
    (``{"offset": [z, y, x], "shape": [z, y, x]}``), ``block_shape``, ``sw_batch_size``, ``amp``. The same
    request again resumes the job (only blocks not done are run); ``GET /jobs/{id}`` follows it."""
    app = _app()
    check_image_id(image)
    await run_in_threadpool(app.jobs.require_workers, TRAIN_QUEUE)
    job = await run_in_threadpool(app.volume_jobs.submit, image, model, dict(params or {}), caller().name)
    return await run_in_threadpool(app.volume_jobs.describe, job.id)


@router.get("/leases/", summary="Live annotator leases")
async def leases():
    app = _app()
    rows = await run_in_threadpool(app.db.leases)
    return [{"image": r.image_id, "client_id": r.client_id, "expires_at": r.expires_at.isoformat()} for r in rows]


def replace_routes(app: FastAPI, with_login: bool = True) -> None:
    """Serve our routes ahead of MONAI Label's, and remove every stock route that is not on the allow-list
    (:data:`~lib.auth.policy.INHERITED`): a request for one gets 404 and it is absent from /openapi.json.
    ``with_login``: our ``/auth/`` and ``/users/`` (not in OIDC mode, where MONAI Label's ``/auth/`` talks to
    Keycloak)."""
    from .auth.policy import inherited
    from .auth.routes import router as auth_router
    from .dicomweb.routes import router as dicomweb_router
    from .viewer import router as viewer_router

    def keep_inherited(routes: list[Any], prefix: str) -> list[Any]:
        kept = []
        for route in routes:
            if hasattr(route, "original_router"):  # an included router: filter its own list in place
                inner = route.original_router
                inner.routes[:] = keep_inherited(inner.routes, prefix + route.include_context.prefix)
                getattr(inner, "_mark_routes_changed", lambda: None)()  # FastAPI caches what it dispatches to
                kept.append(route)
            elif getattr(route, "methods", None):
                if all(inherited(method, prefix + route.path) for method in route.methods):
                    kept.append(route)
            elif inherited("GET", prefix + route.path.rstrip("/") + "/{path:path}"):  # a mount (static files)
                kept.append(route)
        return kept

    app.router.routes[:] = keep_inherited(app.router.routes, "")
    for extra in (router, viewer_router, dicomweb_router) + ((auth_router,) if with_login else ()):
        count = len(app.router.routes)
        app.include_router(extra)
        added = app.router.routes[count:]
        del app.router.routes[count:]
        app.router.routes[0:0] = added
    app.openapi_schema = None  # rebuilt from the routes now served
