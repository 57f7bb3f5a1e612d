"""Whole-volume jobs, the worker's side: do a batch of a step's units, then move the job on after the step's
last (the steps and their transitions: :mod:`lib.jobs.volume_steps`; the API's side: :mod:`lib.jobs.volume_jobs`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from rq import get_current_job

from ..db.models import VolumeJob
from ..errors import NotFound
from ..machine import default_device
from ..transforms.intensity import IntensityStats, normalize
from ..volumes.blocks.plan import BlockPlan
from ..volumes.outputs import VolumeOutput
from ..volumes.regions import Roi
from .client import JobClient
from .runtime import Runtime
from .volume_steps import DONE, MAX_ATTEMPTS, PredictInputs, Step, StepWork, Transitions, enqueue, step_named


def run_step(rt: Runtime, volume_job: str, step_name: str, indices: list[int]) -> dict[str, Any]:
    """Do the units ``indices`` of step ``step_name`` that are not done; move the job on after the step's last."""
    job = rt.db.volume_job(volume_job)
    step = step_named(step_name)
    if job is None or job.status != "RUNNING" or job.step != step_name or step is None:
        return {"skipped": f"job is {job.status if job else 'gone'}, at step {job.step if job else None}"}
    current = get_current_job()
    worker = (current.worker_name if current else None) or f"local-{os.getpid()}"
    transitions = Transitions(rt.db)
    work = StepWork(rt.db, job, rt.configs[job.model].spec, lambda: _predict_inputs(rt, job))
    done: list[int] = []
    for index in indices:
        if (now := rt.db.volume_job(job.id)) is None or now.status != "RUNNING":
            return {"stopped": f"job {job.id} is no longer running", "done": done}
        row = transitions.claim(job.id, step, index, worker)
        if row is None:
            continue
        start = time.time()
        try:
            checksum = step.process(work, index)
        except Exception as e:
            final = row.attempts >= MAX_ATTEMPTS
            reason = f"{type(e).__name__}: {e}"
            transitions.fail(job.id, step, index, reason, final)
            if final:
                error = f"block {index} of step {step.name} failed {row.attempts} times: {reason}"
                transitions.end(job.id, "FAILED", error)
                return {"failed": index, "error": reason}
            raise  # RQ retries the batch once; its done units are skipped
        transitions.finish(job.id, step, index, checksum, time.time() - start)
        done.append(index)
        if current is not None:
            current.meta["progress"] = {"step": step.name, "block": index, "done": len(done), "total": len(indices)}
            current.save_meta()
    _move_on(rt, transitions, job, step)
    return {"step": step.name, "done": done}


def _move_on(rt: Runtime, transitions: Transitions, job: VolumeJob, step: Step) -> None:
    """After ``step``'s last unit (one caller only): end the job, or queue the next step's batches."""
    following = transitions.advance(job.id, step)
    if following == DONE:
        VolumeOutput(job.folder).drop_work()
        transitions.end(job.id, "DONE")
        return
    next_step = step_named(following) if following else None  # None: units remain or another worker moved it on
    if next_step is not None and (current := get_current_job()) is not None:
        client = JobClient(connection=current.connection)
        for batch in next_step.batches(BlockPlan.from_json(job.plan)):
            enqueue(client, job, next_step, batch)


def _predict_inputs(rt: Runtime, job: VolumeJob) -> PredictInputs:
    """Device, network (the weights the job started with) and the image reader, once per batch."""
    device = job.params.get("device", "auto")
    device = default_device() if device in ("auto", None, "") else device
    network = rt.network(job.params["weights"], job.params["weights_checksum"], device)
    datastore = rt.datastore()
    image = rt.db.image(job.image_id)
    if image is None:
        raise NotFound(f"image '{job.image_id}' was removed")
    stats: IntensityStats = datastore.stats(image)
    spec = rt.configs[job.model].spec

    def read_image(roi: Roi) -> np.ndarray:
        return normalize(datastore.read(image, roi), stats, spec.percentiles, spec.intensity_ceiling)

    return device, network, read_image
