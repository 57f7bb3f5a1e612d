"""The job functions workers run. Arguments and results are plain data; models stay loaded between jobs.

A worker calls :func:`configure` once at start-up; the :class:`Runtime` it builds keeps one
``SegmentationInfer`` per model, whose weights are cached and reloaded only when the weights file changes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from rq import get_current_job

from ..activelearning.scoring import dice_score, epistemic_score, tta_score
from ..configs.registry import init_task_configs, init_trainers
from ..configs.task_config import StructureTaskConfig
from ..datastore import MicroscopyDatastore
from ..db.engine import database_url
from ..db.models import utcnow
from ..db.store import Database
from ..errors import AxonSegError, NotFound
from ..infers.segmentation import SegmentationInfer
from ..machine import default_device
from ..trainers.supervised import EpochStats, TrainingStopped
from ..trainers.task import StructureTrainer
from ..transforms.io import read_volume

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

    def datastore(self) -> MicroscopyDatastore:
        """A fresh view of the datastore: the API may have added images or labels since the last job."""
        return MicroscopyDatastore(
            self.studies,
            os.path.join(self.workdir, "views"),
            db=self.db,
            versions_path=os.path.join(self.workdir, "label_versions"),
        )

    def infer_task(self, model: str) -> SegmentationInfer:
        """The model's infer task; tasks of one model share its cached network (``config.weights``)."""
        if model not in self.configs:
            raise NotFound(f"unknown model '{model}'; available models: {', '.join(self.configs)}")
        return self.configs[model].infer()

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


def infer(model: str, image_path: str, params: dict[str, Any], image_id: str | None = None) -> dict[str, Any]:
    """Segment one volume; returns the label file's bytes (NRRD on the image's geometry) and result params.

    For a datastore image (``image_id``), the prediction is also kept as its ``original`` label (what
    the ``dice`` score compares the annotator's final label with) unless ``save_label`` is false.
    """
    rt = runtime()
    try:
        task = rt.infer_task(model)
        result_path, result_params = task({**params, "model": model, "image": image_path})
    except AxonSegError as e:
        return _user_error(e)
    version = rt.db.active_model_version(model)
    result_params["model_version"] = version.id if version else None
    try:
        if image_id and params.get("save_label", True):
            info = {
                "model": model,
                "model_version": result_params["model_version"],
                "client_id": params.get("client_id"),
            }
            rt.datastore().save_label(image_id, result_path, "original", info)
        with open(result_path, "rb") as f:
            data = f.read()
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
        finished_at=utcnow(),
    )
    return {**result, **recorded}


def batch_infer(model: str, image_ids: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Segment several datastore images and store each result as a label tagged ``original``."""
    rt = runtime()
    datastore = rt.datastore()
    task = rt.infer_task(model)
    done, failed = [], {}
    for index, image_id in enumerate(image_ids):
        if rt.stop_event.is_set():
            raise TrainingStopped(f"stopped after {index} of {len(image_ids)} images")
        _progress(done=index, total=len(image_ids), image=image_id)
        try:
            result_path, _ = task({**params, "model": model, "image": datastore.get_image_uri(image_id)})
            try:
                datastore.save_label(image_id, result_path, "original", {"model": model, "client_id": "batch_infer"})
            finally:
                os.remove(result_path)
            done.append(image_id)
        except AxonSegError as e:
            failed[image_id] = str(e)
    return {"model": model, "labelled": done, "failed": failed}


def score(model: str, method: str, image_ids: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Score datastore images under ``model``'s active version and store each score in the database.

    ``epistemic`` and ``tta`` read the image; ``dice`` compares the labels tagged ``original`` (the
    model's prediction) and ``final`` (the annotator's), and skips images without both.
    """
    rt = runtime()
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
        try:
            if method == "dice":
                original, final = (datastore.get_label_uri(image_id, tag) for tag in ("original", "final"))
                if not (original and final):
                    skipped[image_id] = "needs both an original (model) and a final (annotator) label"
                    continue
                value = dice_score(read_volume(original).array, read_volume(final).array)
            elif method == "epistemic":
                array = read_volume(datastore.get_image_uri(image_id)).array
                value = epistemic_score(
                    network, array, config.spec, device, int(params.get("samples", 8)), float(params.get("rate", 0.2))
                )
            else:
                value = tta_score(network, read_volume(datastore.get_image_uri(image_id)).array, config.spec, device)
        except (AxonSegError, OSError, ValueError) as e:
            skipped[image_id] = str(e)
            continue
        rt.db.record_score(image_id, method, value, version.id if version else None)
        scored[image_id] = value
    return {
        "model": model,
        "method": method,
        "model_version": version.id if version else None,
        "scored": scored,
        "skipped": skipped,
    }
