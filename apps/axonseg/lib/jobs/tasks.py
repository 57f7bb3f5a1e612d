"""The job functions workers run. Arguments and results are plain data; models stay loaded between jobs.

A worker calls :func:`configure` once at start-up; the :class:`Runtime` it builds keeps one
``SegmentationInfer`` per model, whose weights are cached and reloaded only when the weights file changes.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rq import get_current_job

from ..activelearning.scoring import dice_score, encoder_features, mc_dropout_uncertainty, scoring_params, tta_score
from ..configs.spec import StructureSpec
from ..datastore import MicroscopyDatastore
from ..db.engine import database_url
from ..db.models import utcnow
from ..db.store import Database, file_checksum
from ..errors import AxonSegError, NotFound
from ..infers.postprocessing import structure_label
from ..infers.predict import voxel_size_nm
from ..infers.segmentation import (
    SegmentationInfer,
    parse_infer_request,
    read_anchors,
    reply_label,
    write_label_file,
)
from ..machine import default_device
from ..networks import load_weights
from ..trainers.supervised import EpochStats, TrainingStopped
from ..trainers.task import StructureTrainer
from ..wiring import StructureTaskConfig, init_task_configs, init_trainers

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a worker keeps between jobs."""

    studies: str
    workdir: str
    configs: dict[str, StructureTaskConfig]
    trainers: dict[str, StructureTrainer]
    db: Database
    # Set by the worker when the API asks to stop the running job; polled by long jobs.
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Networks of archived weights files (volume jobs name the exact version they started with).
    networks: dict[tuple[str, str], torch.nn.Module] = field(default_factory=dict)

    def datastore(self) -> MicroscopyDatastore:
        """The datastore over the shared database and volume store (cheap: it holds no state of its own)."""
        return MicroscopyDatastore(
            self.studies, self.workdir, self.db, {name: config.spec for name, config in self.configs.items()}
        )

    def infer_task(self, model: str) -> SegmentationInfer:
        """The model's infer task; tasks of one model share its cached network (``config.weights``)."""
        if model not in self.configs:
            raise NotFound(f"unknown model '{model}'; available models: {', '.join(self.configs)}")
        return self.configs[model].infer()

    def network(self, path: str, checksum: str, device: str) -> torch.nn.Module:
        """The network of the weights file ``path``, loaded once per worker; NotFound if the file is gone or
        is no longer the version a job started with (``checksum``)."""
        key = (path, device)
        if key not in self.networks:
            if not os.path.isfile(path) or file_checksum(path) != checksum:
                raise NotFound(f"the weights this job started with ({os.path.basename(path)}) are gone or changed")
            self.networks[key] = load_weights(path, device)[0]
        return self.networks[key]

    def warm_up(self, device: str) -> None:
        for model in self.configs:
            self.infer_task(model).weights.load(device)


_runtime: Runtime | None = None


def configure(studies: str, workdir: str) -> Runtime:
    global _runtime
    configs = init_task_configs(workdir)
    _runtime = Runtime(
        studies, workdir, configs, init_trainers(configs, workdir, studies), Database(database_url(workdir))
    )
    return _runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("lib.jobs.tasks.configure() was not called: jobs run inside `python -m lib.jobs.worker`")
    return _runtime


def _user_error(error: AxonSegError) -> dict[str, Any]:
    """Errors the request caused are results, not failures: retrying them cannot help."""
    return {"error": str(error), "status_code": error.status_code}


def _progress(**values: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = values
        job.save_meta()


def _context(spec: StructureSpec) -> tuple[int, int, int]:
    """Context read around a region: half the network's window on each side, so every voxel of the region
    sees as much of its surroundings as in a whole-volume prediction."""
    return tuple(p // 2 for p in spec.patch_size)  # type: ignore[return-value]


def segment_region(
    task: SegmentationInfer,
    datastore: MicroscopyDatastore,
    image_id: str,
    params: dict[str, Any],
    anchors_path: str | None = None,
) -> tuple[np.ndarray, dict[str, Any], Any]:
    """Predict a datastore region (or small image) with context, normalised by its image's statistics."""
    data = datastore.read_region(image_id, _context(task.spec))
    anchors = read_anchors(anchors_path, data.region_volume.array.shape) if anchors_path else None
    label, result_params = task.run(data.volume, params, data.stats, data.inner, anchors)
    return label, result_params, data.region_volume


def infer(
    model: str,
    params: dict[str, Any],
    image_id: str | None = None,
    image_path: str | None = None,
    anchors_path: str | None = None,
) -> dict[str, Any]:
    """Segment a datastore region (``image_id``) or an uploaded file (``image_path``); returns the label
    file's bytes (NRRD on the region's or file's geometry) and result params. ``anchors_path``: the label
    file sent with the request, a ``trace`` request's anchors on the region's or file's grid.

    For a datastore region, the prediction is also kept as its ``original`` label of the model's
    structure (what the ``dice`` score compares the annotator's final label with) unless ``save_label``
    is false.
    """
    rt = runtime()
    try:
        task = rt.infer_task(model)
        if image_id:
            datastore = rt.datastore()
            label, result_params, geometry = segment_region(task, datastore, image_id, params, anchors_path)
            parsed = parse_infer_request(task.spec, params)
            reply = reply_label(label, parsed, task.spec)
            result_path = write_label_file(reply, geometry, model, parsed.result_compress)
        else:
            result_path, result_params = task({**params, "model": model, "image": image_path, "label": anchors_path})
            label = None
    except AxonSegError as e:
        return _user_error(e)
    version = rt.db.active_model_version(model)
    result_params["model_version"] = version.id if version else None
    try:
        # an image split into regions, predicted whole, is no region to keep a label of
        save = parse_infer_request(task.spec, params).save_label  # "false" as text is false
        if label is not None and save and datastore.is_region(image_id):
            region, image = datastore.region_and_image(image_id)
            info = {
                "model": model,
                "model_version": result_params["model_version"],
                "client_id": params.get("client_id"),
            }
            if model in (image.structures or []):
                original = structure_label(label, parsed.method)  # trace: its membranes, not its ids
                datastore.write_label(region, image, model, "original", original, info)
        with open(result_path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")  # results are JSON (queues.SERIALIZER)
    finally:
        os.remove(result_path)
    return {"label": data, "filename": os.path.basename(result_path), "params": result_params}


def train(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the trainer ``model`` (a model's retraining or ``ssl_pretrain``); records the run and what it
    produced (a model or encoder version)."""
    rt = runtime()
    job = get_current_job()
    job_id = job.id if job else "local"
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
        return _user_error(e)
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


def batch_infer(model: str, image_ids: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Segment several datastore regions and store each result as the model's ``original`` label."""
    rt = runtime()
    datastore = rt.datastore()
    task = rt.infer_task(model)
    done, failed = [], {}
    method = parse_infer_request(task.spec, params).method  # the API checked the request
    for index, image_id in enumerate(image_ids):
        if rt.stop_event.is_set():
            raise TrainingStopped(f"stopped after {index} of {len(image_ids)} images")
        _progress(done=index, total=len(image_ids), image=image_id)
        try:
            label, _, _ = segment_region(task, datastore, image_id, params)
            region, image = datastore.region_and_image(image_id)
            original = structure_label(label, method)
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
        return _user_error(e)
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
                geometry = {
                    "stats": data.stats,
                    "inner": data.inner,
                    "voxel_size_nm": voxel_size_nm(data.volume),
                }
                if method in ("epistemic", "entropy"):
                    samples, rate = checked["samples"], checked["rate"]
                    value = mc_dropout_uncertainty(network, data.array, config.spec, device, samples, rate, **geometry)[
                        method
                    ]
                    if method == "epistemic":  # what diversity-aware sampling compares regions by
                        region = data.array[data.inner]
                        features = encoder_features(
                            network, region, config.spec, device, data.stats, geometry["voxel_size_nm"]
                        )
                else:
                    value = tta_score(network, data.array, config.spec, device, **geometry)
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
    """A batch of a whole-volume job's blocks (``lib.jobs.volume``)."""
    from .volume import run_step

    return run_step(runtime(), volume_job, step, indices)
