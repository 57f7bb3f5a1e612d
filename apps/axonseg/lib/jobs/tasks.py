"""The job functions workers run (the queue's entry points, :data:`lib.jobs.queues.JOB_KINDS`). Arguments
and results are plain data; models stay loaded between jobs in the worker's :mod:`lib.jobs.runtime`.

An error the request caused is the job's result (:func:`lib.errors.error_result`), raised again with its kind
on the API side; a training run's final state is written here, once, before the job ends.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from rq import get_current_job

from ..activelearning.scoring import dice_score, encoder_features, mc_dropout_uncertainty, scoring_params, tta_score
from ..configs.spec import StructureSpec
from ..datastore import MicroscopyDatastore
from ..db.models import utcnow
from ..errors import AxonSegError, InvalidRequest, error_result
from ..infers.postprocessing import structure_label
from ..infers.predict import Predictor, voxel_size_nm
from ..infers.request import InferRequest
from ..infers.segmentation import InferInput, SegmentationInfer, encode_label, reply_label
from ..machine import default_device
from ..trainers.supervised import EpochStats, TrainingStopped
from ..transforms.io import read_volume
from ..volumes.regions import zyx
from .runtime import runtime
from .volume_worker import run_step

logger = logging.getLogger(__name__)


def _progress(**values: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = values
        job.save_meta()


def _context(spec: StructureSpec) -> tuple[int, int, int]:
    """Context read around a region: half the network's window on each side, so every voxel of the region
    sees as much of its surroundings as in a whole-volume prediction."""
    return zyx(p // 2 for p in spec.patch_size)


def region_input(task: SegmentationInfer, datastore: MicroscopyDatastore, image_id: str) -> InferInput:
    """A datastore region (or small image) read with context, normalised by its image's statistics."""
    data = datastore.read_region(image_id, _context(task.spec))
    return InferInput(data.volume, data.region_volume, data.stats, data.inner)


def infer(
    model: str,
    request: dict[str, Any],
    client_id: str | None = None,
    image_id: str | None = None,
    image_path: str | None = None,
    anchors_path: str | None = None,
    max_voxels_in_memory: int | None = None,
) -> dict[str, Any]:
    """Segment a datastore region (``image_id``) or an uploaded file (``image_path``, read whole up to
    ``max_voxels_in_memory``) as ``request`` (:meth:`InferRequest.to_dict`, checked by the API) asks; returns
    the reply's label (NRRD on the region's or file's geometry, base64: results are JSON, queues.SERIALIZER)
    and result params. ``anchors_path``: the label file sent with the request, a ``trace`` request's anchors
    on the region's or file's grid.

    For a datastore region, the prediction is also kept as its ``original`` label of the model's
    structure (what the ``dice`` score compares the annotator's final label with) unless ``save_label``
    is false.
    """
    rt = runtime()
    parsed = InferRequest.from_dict(request)
    try:
        task = rt.infer_task(model)
        datastore = rt.datastore()
        if image_id:
            source = region_input(task, datastore, image_id)
        elif image_path:
            volume = read_volume(image_path, max_voxels_in_memory=max_voxels_in_memory)
            source = InferInput(volume, volume)
        else:
            raise InvalidRequest("an infer job segments a datastore image or an uploaded file; it was given neither")
        label, result_params = task.run(source, parsed, anchors_path)
        reply = encode_label(reply_label(label, parsed, task.spec), source.reply, parsed.result_compress)
    except AxonSegError as e:
        return error_result(e)
    version = rt.db.active_model_version(model)
    result_params["model_version"] = version.id if version else None
    # an image split into regions, predicted whole, is no region to keep a label of
    if image_id and parsed.save_label and datastore.is_region(image_id):
        region, image = datastore.region_and_image(image_id)
        info = {"model": model, "model_version": result_params["model_version"], "client_id": client_id}
        if model in (image.structures or []):
            original = structure_label(label, parsed.method)  # trace: its membranes, not its ids
            datastore.write_label(region, image, model, "original", original, info)
    label_file = base64.b64encode(reply).decode("ascii")
    return {"label": label_file, "filename": f"{model}.nrrd", "params": result_params}


def train(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the trainer ``model`` (a model's retraining or ``ssl_pretrain``); records the run and what it
    produced (a model or encoder version)."""
    rt = runtime()
    job = get_current_job()
    job_id = job.id if job else "local"
    rt.db.add_training_run(job_id, model, params, status="RUNNING")  # if the API has not recorded it yet
    rt.db.update_training_run(job_id, status="RUNNING")
    trainer = rt.trainers[model]  # the API accepted only known trainers

    def on_epoch(stats: EpochStats) -> None:
        epoch = stats.to_dict()
        rt.db.add_training_epoch(job_id, epoch)
        _progress(**{k: epoch.get(k) for k in ("epoch", "total_epochs", "loss", "best_metric", "total_time")})

    try:
        resolved = trainer.resolve(params, rt.db)  # e.g. an encoder version id becomes its file
        result = trainer(resolved, rt.datastore(), should_stop=rt.stop_event.is_set, on_epoch=on_epoch)
        recorded = trainer.record(result, rt.db)
    except TrainingStopped as e:
        rt.db.update_training_run(job_id, status="STOPPED", error=str(e), finished_at=utcnow())
        raise
    except AxonSegError as e:
        rt.db.update_training_run(job_id, status="ERROR", error=str(e), finished_at=utcnow())
        return error_result(e)
    except Exception as e:
        rt.db.update_training_run(job_id, status="ERROR", error=f"{type(e).__name__}: {e}", finished_at=utcnow())
        raise
    rt.db.update_training_run(
        job_id,
        status="DONE",
        model_version_id=recorded.get("model_version"),
        encoder_version_id=recorded.get("encoder_version"),
        gate=result.get("gate"),
        finished_at=utcnow(),
    )
    return {**result, **recorded}


def batch_infer(model: str, image_ids: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """Segment several datastore regions and store each result as the model's ``original`` label."""
    rt = runtime()
    datastore = rt.datastore()
    task = rt.infer_task(model)
    done, failed = [], {}
    parsed = InferRequest.from_dict(request)  # the API checked it
    for index, image_id in enumerate(image_ids):
        if rt.stop_event.is_set():
            raise TrainingStopped(f"stopped after {index} of {len(image_ids)} images")
        _progress(done=index, total=len(image_ids), image=image_id)
        try:
            label, _ = task.run(region_input(task, datastore, image_id), parsed)
            region, image = datastore.region_and_image(image_id)
            original = structure_label(label, parsed.method)
            info = {"model": model, "client_id": "batch_infer"}
            datastore.write_label(region, image, model, "original", original, info)
            done.append(image_id)
        except AxonSegError as e:
            failed[image_id] = str(e)
    return {"model": model, "labelled": done, "failed": failed}


def score(model: str, method: str, image_ids: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Score datastore regions under ``model``'s active version and store each score in the database.

    ``epistemic``, ``entropy`` and ``tta`` read the region with context, normalised by its image's statistics
    and scored on the model's voxel grid (``epistemic`` also stores the region's encoder features);
    ``dice`` compares the model's ``original`` label with the annotator's ``final`` one, and skips
    regions without both.
    """
    rt = runtime()
    try:
        checked = scoring_params(method, params)  # the API checked them; a job queued otherwise fails here
    except AxonSegError as e:
        return error_result(e)
    config = rt.configs[model]
    datastore = rt.datastore()
    version = rt.db.active_model_version(model)  # read before the weights: a newer file only makes the score fresher
    device = default_device()
    network, _, _ = config.weights.load(device)
    scored: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for index, image_id in enumerate(image_ids):
        if rt.stop_event.is_set():
            raise TrainingStopped(f"stopped after {index} of {len(image_ids)} images")
        _progress(done=index, total=len(image_ids), image=image_id)
        features = None
        try:
            if method == "dice":
                original, final = (datastore.read_label(image_id, model, tag) for tag in ("original", "final"))
                if original is None or final is None:
                    skipped[image_id] = "needs both an original (model) and a final (annotator) label"
                    continue
                value = dice_score(original, final)
            else:
                data = datastore.read_region(image_id, _context(config.spec))
                predictor = Predictor(network, config.spec, device, data.stats, voxel_size_nm(data.volume))
                if method in ("epistemic", "entropy"):
                    uncertainty = mc_dropout_uncertainty(
                        predictor, data.array, checked["samples"], checked["rate"], inner=data.inner
                    )
                    value = uncertainty[method]
                    if method == "epistemic":  # what diversity-aware sampling compares regions by
                        features = encoder_features(predictor, data.array[data.inner])
                else:
                    value = tta_score(predictor, data.array, inner=data.inner)
        except (AxonSegError, OSError, ValueError) as e:
            skipped[image_id] = str(e)
            continue
        rt.db.record_score(image_id, method, value, version.id if version else None, features)
        scored[image_id] = value
    return {
        "model": model,
        "method": method,
        "model_version": version.id if version else None,
        "scored": scored,
        "skipped": skipped,
    }


def volume_step(volume_job: str, step: str, indices: list[int]) -> dict[str, Any]:
    """A batch of a whole-volume job's units (``lib.jobs.volume_worker``)."""
    return run_step(runtime(), volume_job, step, indices)
