"""Whole-volume jobs on the queue: SQL says what is done, Redis only carries which blocks to do next.

A job (``volume_jobs``) moves through the steps of :mod:`lib.volumes.blockwise`; every unit of a step
is a ``volume_blocks`` row. Blocks go to the train (GPU) queue in batches of ``plan.blocks_per_job``
as RQ jobs ``<job>-<step>-<first block>``; the worker that finishes the last block of a step moves
the job on (a compare-and-set in SQL, so exactly once) and queues the next step.

What survives what:
- a killed worker: its RQ job is found abandoned (heartbeat) and retried once; blocks it finished are
  skipped. A block is tried at most :data:`MAX_ATTEMPTS` times, then the job fails naming it.
- Redis restarted (queue lost), API restarted, job resubmitted: :meth:`VolumeJobs.reconcile` queues
  again every batch with blocks not done that no live RQ job holds. It runs on submit, on
  ``GET /jobs/{id}`` and when the API starts.
- cancel: the job is marked CANCELLED; queued batches are taken off the queue, a running batch stops
  before its next block.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

from ..configs.spec import StructureSpec
from ..db.models import Image, VolumeBlock, VolumeJob, utcnow
from ..db.store import Database
from ..errors import InvalidRequest, NotFound
from ..infers.predict import resampling_zoom
from ..machine import default_device
from ..transforms.intensity import IntensityStats, normalize
from ..volumes.blocks.plan import BlockPlan, Postprocess, VolumeRequest
from ..volumes.blocks.steps import build_pyramid, predict_block, relabel_block, stitch
from ..volumes.outputs import OUTPUTS, VolumeOutput
from ..volumes.regions import Roi
from ..volumes.store import chunks_for, downsample_factors
from .client import ACTIVE, JobClient
from .queues import JOB_KINDS, SERIALIZER

if TYPE_CHECKING:
    from .tasks import Runtime

logger = logging.getLogger(__name__)

STEPS = ("predict", "stitch", "relabel", "pyramid")
BLOCK_STEPS = ("predict", "relabel")  # one unit per write block; stitch is one, pyramid one per output
MAX_ATTEMPTS = 2
JOB_PREFIX = "vol-"


def is_volume_job(job_id: str) -> bool:
    return job_id.startswith(JOB_PREFIX)


def batches(plan: BlockPlan, step: str) -> list[list[int]]:
    """The units of ``step``, as they are queued together."""
    if step in BLOCK_STEPS:
        return plan.batches()
    return [[i] for i in range(len(OUTPUTS) if step == "pyramid" else 1)]


def _next_step(step: str) -> str:
    return STEPS[STEPS.index(step) + 1] if step != STEPS[-1] else "done"


def _voxel_size_nm(image: Image) -> tuple[float, ...] | None:
    return tuple(1000.0 * v for v in image.voxel_size_um) if image.voxel_size_um else None


class VolumeJobs:
    """The API's side: submit, reconcile, cancel and describe volume jobs."""

    def __init__(self, db: Database, jobs: JobClient, workdir: str, specs: dict[str, StructureSpec]):
        self.db, self.jobs, self.specs = db, jobs, specs
        self.root = os.path.join(workdir, "volume_jobs")

    # submitting ----------------------------------------------------------------------------
    def submit(self, image_id: str, model: str, request: dict[str, Any], owner: str | None = None) -> VolumeJob:
        """Plan and queue ``model`` over ``image_id`` (or resume the job that computes the same; its first
        submitter stays its ``owner``)."""
        spec = self.specs.get(model)
        if spec is None:
            raise NotFound(f"unknown model '{model}'; available models: {', '.join(self.specs)}")
        image = self.db.image(image_id)
        if image is None or not image.storage_uri:
            raise NotFound(f"image '{image_id}' is not in the volume store")
        checked = VolumeRequest.parse(spec, request, tuple(image.shape))  # type: ignore[arg-type]
        if resampling_zoom(spec, _voxel_size_nm(image)) is not None:
            raise InvalidRequest(
                f"'{image_id}' has voxels of {image.voxel_size_um} µm, far from the model's "
                f"{[v / 1000 for v in spec.voxel_size_nm or ()]} µm; whole-volume jobs run on the image's grid, "
                "so resample the volume first (interactive /infer/ resamples regions)"
            )
        shape = tuple(image.shape)
        chunks = tuple(image.chunks or chunks_for(shape))  # type: ignore[arg-type]
        post = checked.post
        plan = BlockPlan.make(shape, chunks, spec.patch_size, checked.roi, checked.block)  # type: ignore[arg-type]
        if checked.blocks_per_job > 0:
            plan = dataclasses.replace(plan, blocks_per_job=checked.blocks_per_job)
        version = self.db.active_model_version(model)
        if version is None or not os.path.isfile(version.path):
            raise NotFound(f"'{model}' has no weights to serve")
        params = {
            "method": post.method,
            "options": post.options,
            "weights": version.path,
            "weights_checksum": version.checksum,
            "sw_batch_size": checked.sw_batch_size,
            "amp": checked.amp,
            "device": checked.device,
        }
        key = hashlib.sha256(
            json.dumps(
                [image_id, model, params["weights_checksum"], post.method, post.options, plan.to_json()], sort_keys=True
            ).encode()
        ).hexdigest()
        job_id = JOB_PREFIX + uuid.uuid4().hex[:16]
        folder = os.path.join(self.root, job_id)
        blocks = plan.blocks()
        rows = [
            VolumeBlock(
                job_id=job_id, step=step, index=i, voxels=blocks[i].size if step in BLOCK_STEPS else plan.domain.size
            )
            for step in STEPS
            for batch in batches(plan, step)
            for i in batch
        ]
        candidate = VolumeJob(
            id=job_id, key=key, image_id=image_id, model=model, model_version_id=version.id, params=params,
            plan=plan.to_json(), folder=folder, step=STEPS[0], status="RUNNING", owner=owner,
        )  # fmt: skip
        VolumeOutput(folder).create(shape, plan.chunks, tuple(image.voxel_size_um) if image.voxel_size_um else None)  # type: ignore[arg-type]
        job, created = self.db.add_volume_job(candidate, rows)
        if not created:
            VolumeOutput(folder).remove()
            if job.status in ("FAILED", "CANCELLED"):
                self.db.resume_volume_job(job.id)
            elif job.status == "RUNNING":
                self.db.update_volume_job(job.id, resumed_at=utcnow())
        self.reconcile(job.id)
        return self.db.volume_job(job.id)  # type: ignore[return-value]

    # keeping the queue in step with SQL ----------------------------------------------------
    def reconcile(self, job_id: str) -> None:
        """Queue every batch of the job's current step that has blocks not done and no live RQ job."""
        job = self.db.volume_job(job_id)
        if job is None or job.status != "RUNNING" or job.step not in STEPS:
            return
        queue = JOB_KINDS["volume"].queue
        self.jobs.queues[queue].started_job_registry.cleanup()  # abandoned jobs: retried or failed
        plan = BlockPlan.from_json(job.plan)
        rows = {row.index: row for row in self.db.volume_blocks(job.id, job.step)}
        waiting = [b for b in batches(plan, job.step) if any(rows[i].status != "DONE" for i in b)]
        ids = [f"{job.id}-{job.step}-{b[0]}" for b in waiting]
        # one round trip for all of them (a large volume has hundreds of batches)
        fetched = Job.fetch_many(ids, connection=self.jobs.connection, serializer=SERIALIZER)
        for batch, rq_id, existing in zip(waiting, ids, fetched):
            if existing is not None and existing.get_status(refresh=False) in ACTIVE:
                continue
            spent = [i for i in batch if rows[i].status != "DONE" and rows[i].attempts >= MAX_ATTEMPTS]
            if spent:
                row = rows[spent[0]]
                reason = row.error or "its worker died each time (killed, or out of memory)"
                self.fail(job.id, f"block {spent[0]} of step {job.step} failed {row.attempts} times: {reason}")
                return
            enqueue(self.jobs, job, job.step, batch, rq_id)

    def reconcile_running(self) -> None:
        """On API start: queue again what a restarted Redis may have lost."""
        for job in self.db.volume_jobs(status="RUNNING"):
            try:
                self.reconcile(job.id)
            except RedisError as e:
                logger.warning(f"could not queue volume job {job.id} again (Redis unavailable: {e})")

    def fail(self, job_id: str, error: str) -> None:
        self.db.update_volume_job(job_id, status="FAILED", error=error, finished_at=utcnow())

    def cancel(self, job_id: str) -> VolumeJob:
        job = self._job(job_id)
        if job.status == "RUNNING":
            self.db.update_volume_job(job.id, status="CANCELLED", error="cancelled", finished_at=utcnow())
            plan = BlockPlan.from_json(job.plan)
            for batch in batches(plan, job.step):
                rq = self.jobs.job(f"{job.id}-{job.step}-{batch[0]}")
                if rq is not None and self.jobs.refresh_status(rq, clean=False) in ACTIVE:
                    self.jobs.cancel(rq.id)
        return self._job(job_id)

    def _job(self, job_id: str) -> VolumeJob:
        job = self.db.volume_job(job_id)
        if job is None:
            raise NotFound(f"no volume job '{job_id}'")
        return job

    # describing ----------------------------------------------------------------------------
    def describe(self, job_id: str) -> dict[str, Any]:
        """The job as ``GET /jobs/{id}`` shows it: blocks done of total per step, rate and ETA."""
        self.reconcile(job_id)
        job = self._job(job_id)
        blocks = self.db.volume_blocks(job.id)
        steps = {}
        for step in STEPS:
            rows = [b for b in blocks if b.step == step]
            steps[step] = {
                "done": sum(b.status == "DONE" for b in rows),
                "total": len(rows),
                "failed": sum(b.status == "FAILED" for b in rows),
                "running": sum(b.status == "RUNNING" for b in rows),
            }
        predicted = [b for b in blocks if b.step == "predict"]
        since = [
            b
            for b in predicted
            if b.status == "DONE" and b.finished_at and _aware(b.finished_at) >= _aware(job.resumed_at)
        ]
        elapsed = (_aware(job.finished_at or utcnow()) - _aware(job.resumed_at)).total_seconds()
        rate = sum(b.voxels for b in since) / elapsed if since and elapsed > 0 else None
        left = sum(b.voxels for b in predicted if b.status != "DONE")
        status = {"RUNNING": "RUNNING", "DONE": "DONE", "FAILED": "ERROR", "CANCELLED": "STOPPED"}[job.status]
        done_all = sum(s["done"] for s in steps.values())
        total_all = sum(s["total"] for s in steps.values())
        return {
            "id": job.id,
            "kind": "volume",
            "image": job.image_id,
            "model": job.model,
            "model_version": job.model_version_id,
            "status": status,
            "state": job.status.lower(),
            "step": job.step,
            "steps": steps,
            "progress": {
                "done": done_all,
                "total": total_all,
                "blocks_done": steps["predict"]["done"],
                "blocks_total": steps["predict"]["total"],
                "voxels_per_s": round(rate) if rate else None,
                "eta_s": round(left / rate, 1) if rate and left else (0.0 if not left else None),
            },
            "plan": job.plan,
            "postprocessing": {"method": job.params["method"], **job.params["options"]},
            "error": job.error,
            "summary": job.summary,
            "output": f"/zarr/{job.image_id}/outputs/{job.model}/" if job.status == "DONE" else None,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def enqueue(jobs: JobClient, job: VolumeJob, step: str, batch: list[int], rq_id: str | None = None) -> None:
    """Queue one batch of a step; only ids travel (the worker reads the plan from SQL)."""
    jobs.submit(
        "volume",
        description=f"volume '{job.model}' on '{job.image_id}': {step} blocks {batch[0]}-{batch[-1]}",
        meta={"volume_job": job.id, "step": step},
        job_id=rq_id or f"{job.id}-{step}-{batch[0]}",
        volume_job=job.id,
        step=step,
        indices=batch,
    )


# --- the worker's side ---------------------------------------------------------------------------
def run_step(rt: Runtime, volume_job: str, step: str, indices: list[int]) -> dict[str, Any]:
    """Do the blocks ``indices`` of ``step`` that are not done; move the job on after the step's last."""
    job_id = volume_job
    job = rt.db.volume_job(job_id)
    if job is None or job.status != "RUNNING" or job.step != step:
        return {"skipped": f"job is {job.status if job else 'gone'}, at step {job.step if job else None}"}
    current = get_current_job()
    worker = (current.worker_name if current else None) or f"local-{os.getpid()}"
    work = _StepWork(rt, job)
    done = []
    for index in indices:
        if rt.db.volume_job(job_id).status != "RUNNING":  # type: ignore[union-attr]
            return {"stopped": f"job {job_id} is no longer running", "done": done}
        row = rt.db.start_volume_block(job_id, step, index, worker)
        if row is None:
            continue
        start = time.time()
        try:
            checksum = work.run(step, index)
        except Exception as e:
            final = row.attempts >= MAX_ATTEMPTS
            reason = f"{type(e).__name__}: {e}"
            rt.db.fail_volume_block(job_id, step, index, reason, final)
            if final:
                rt.db.update_volume_job(
                    job_id,
                    status="FAILED",
                    error=f"block {index} of step {step} failed {row.attempts} times: {reason}",
                    finished_at=utcnow(),
                )
                return {"failed": index, "error": reason}
            raise  # RQ retries the batch once; its done blocks are skipped
        rt.db.finish_volume_block(job_id, step, index, checksum, time.time() - start)
        done.append(index)
        if current is not None:
            current.meta["progress"] = {"step": step, "block": index, "done": len(done), "total": len(indices)}
            current.save_meta()
    next_step = _next_step(step)
    if rt.db.advance_volume_step(job_id, step, next_step):
        job = rt.db.volume_job(job_id)
        if next_step == "done":
            VolumeOutput(job.folder).drop_work()  # type: ignore[union-attr]
            rt.db.update_volume_job(job_id, status="DONE", finished_at=utcnow())
        elif current is not None:
            client = JobClient(connection=current.connection)
            for batch in batches(BlockPlan.from_json(job.plan), next_step):  # type: ignore[union-attr]
                enqueue(client, job, next_step, batch)  # type: ignore[arg-type]
    return {"step": step, "done": done}


class _StepWork:
    """One volume job's inputs, opened once per batch."""

    def __init__(self, rt: Runtime, job: VolumeJob):
        self.rt, self.job = rt, job
        self.plan = BlockPlan.from_json(job.plan)
        self.spec = rt.configs[job.model].spec
        self.post = Postprocess(job.params["method"], job.params["options"], self.spec.voxel_size_nm)
        self.output = VolumeOutput(job.folder)

    def run(self, step: str, index: int) -> str:
        if step == "predict":
            return self._predict(index)
        if step == "relabel":
            return relabel_block(self.plan, index, self.post, self.output)
        if step == "stitch":
            summary = stitch(self.plan, self.post, self.output)
            self.rt.db.update_volume_job(self.job.id, summary=summary)
            return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
        image = self.rt.db.image(self.job.image_id)
        voxel_size = tuple(image.voxel_size_um) if image and image.voxel_size_um else None
        levels = build_pyramid(self.output, list(OUTPUTS)[index], downsample_factors(voxel_size), voxel_size)  # type: ignore[arg-type]
        return hashlib.sha256(json.dumps(levels).encode()).hexdigest()

    @functools.cached_property
    def _inputs(self) -> tuple[str, torch.nn.Module, Callable[[Roi], np.ndarray]]:
        """Device, network and the image reader, once per batch (not per block)."""
        device = self.job.params.get("device", "auto")
        device = default_device() if device in ("auto", None, "") else device
        network = self.rt.network(self.job.params["weights"], self.job.params["weights_checksum"], device)
        datastore = self.rt.datastore()
        image = self.rt.db.image(self.job.image_id)
        if image is None:
            raise NotFound(f"image '{self.job.image_id}' was removed")
        stats: IntensityStats = datastore.stats(image)

        def read_image(roi: Roi) -> np.ndarray:
            return normalize(datastore.read(image, roi), stats, self.spec.percentiles, self.spec.intensity_ceiling)

        return device, network, read_image

    def _predict(self, index: int) -> str:
        device, network, read_image = self._inputs
        return predict_block(
            self.plan,
            index,
            self.spec,
            self.post,
            read_image,
            network,
            self.output,
            device,
            int(self.job.params.get("sw_batch_size", 2)),
            bool(self.job.params.get("amp", True)),
        )


def output_folder(db: Database, image_id: str, model: str) -> str | None:
    """The output of the newest finished job of ``model`` on ``image_id``."""
    done = db.volume_jobs(image_id=image_id, model=model, status="DONE")
    return VolumeOutput(done[0].folder).zarr_path if done else None
