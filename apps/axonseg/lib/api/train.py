"""Training, in MONAI Label's shapes (3D Slicer polls ``GET /train/``); runs are queued to a train worker.

POST   /train/{model}, /train/   200 with the task, 429 if training is busy and enqueue is false
GET    /train/                   the running run, else the latest (all=true: every run;
                                 check_if_running=true: 200 with the running run, else 404)
DELETE /train/                   stops the running training inside its worker
GET    /train/{model}/learning_curve.png   loss and validation scores of the trainer's latest run
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..db.models import TrainingRun
from ..errors import NotFound
from ..jobs.training import FINAL
from ..trainers.report import plot_learning_curve
from .common import Svc, finite, timestamp

router = APIRouter()


def train_task(run: TrainingRun) -> dict[str, Any]:
    """A training run in the shape MONAI Label's /train/ returns (Slicer polls ``status``).

    JSON-safe whatever was stored: a NaN loss of a diverging run (or a NaN param stored before params had
    bounds) becomes null, where it would make every GET /train/ a 500."""
    epochs = finite(run.epochs or [])
    details = []
    for e in epochs[-20:] if isinstance(epochs, list) else []:
        e = e if isinstance(e, dict) else {}
        loss = e.get("loss")
        loss = f"{loss:.4f}" if isinstance(loss, (int, float)) and not isinstance(loss, bool) else loss
        details.append(f"epoch {e.get('epoch')}/{e.get('total_epochs')} loss {loss}")
    return finite(
        {
            "id": run.job_id,
            "name": "train",
            "model": run.model,
            "status": run.status,
            "request": {"model": run.model, **(run.params or {})},
            "start_ts": timestamp(run.started_at),
            "end_ts": timestamp(run.finished_at),
            "epochs": epochs,
            "details": details,
            "error": run.error,
            "model_version": run.model_version_id,
            "encoder_version": run.encoder_version_id,
            "gate": run.gate,  # why the run's weights were published or not
        }
    )


@router.post("/train/{model}", summary="Start training a model (queued to a train worker)")
async def train_model(svc: Svc, model: str, params: dict | None = None, enqueue: bool = False):
    runs = await run_in_threadpool(svc.training.submit, [model], dict(params or {}), enqueue)
    return train_task(runs[0])


@router.post("/train/", summary="Train every model, one after another")
async def train_all(svc: Svc, params: dict | None = None):
    """Body: options for every model, and under a model's name options for it alone (``{"axon": {...}}``)."""
    runs = await run_in_threadpool(svc.training.submit_all, list(svc.task_configs), dict(params or {}))
    return {run.model: {"result": train_task(run), "detail": None} for run in runs}


@router.get("/train/", summary="Status of training (MONAI Label shape)")
async def train_status(svc: Svc, all: bool = False, check_if_running: bool = False):
    def read():
        # The running run first (what Slicer's progress bar follows), then queued ones, then the latest.
        active = svc.training.active()
        if check_if_running:
            return train_task(active[0]) if active else None
        runs = [svc.training.sync(run) for run in svc.db.training_runs(limit=None if all else 1)]
        if all:
            return [train_task(run) for run in reversed(runs)]
        return train_task((active or runs)[0]) if runs else None

    result = await run_in_threadpool(read)
    if result is None:
        raise NotFound("No Train Tasks are currently Running" if check_if_running else "No Train Tasks Found")
    return result


@router.delete("/train/", summary="Stop training inside its worker")
async def train_stop(svc: Svc):
    runs = await run_in_threadpool(svc.training.active)
    for run in runs:
        await run_in_threadpool(svc.jobs.cancel, run.job_id)
    if not runs:
        latest = await run_in_threadpool(svc.db.training_runs)
        return train_task(latest[0]) if latest else {}
    run = runs[0]
    for _ in range(200):  # the training loop notices within one iteration
        row = await run_in_threadpool(svc.db.training_run, run.job_id)
        run = await run_in_threadpool(svc.training.sync, row or run)
        if run.status in FINAL:
            break
        await asyncio.sleep(0.05)
    return train_task(run)


@router.get("/train/{model}/learning_curve.png", summary="Learning curve of the trainer's latest run (PNG)")
async def learning_curve(svc: Svc, model: str):
    trainer = svc.trainers.get(model)
    if trainer is None:
        raise NotFound(f"unknown trainer '{model}'; available trainers: {', '.join(svc.trainers)}")
    stats = await run_in_threadpool(trainer.stats)
    if not stats.get("history"):
        raise NotFound(f"'{model}' has not been trained here yet; POST /train/{model} starts a run")

    def draw() -> bytes:
        png = io.BytesIO()
        plot_learning_curve(png, stats["history"], f"{model}: {trainer.description} ({stats['status']})")
        return png.getvalue()

    return Response(await run_in_threadpool(draw), media_type="image/png")
