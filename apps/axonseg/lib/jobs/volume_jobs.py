"""Whole-volume jobs, the API's side: submit, reconcile, cancel and describe. SQL says what is done, Redis
only carries which units to do next; the steps and their transitions are :mod:`lib.jobs.volume_steps`, the
worker's side :mod:`lib.jobs.volume_worker`.

What survives what:
- a killed worker: its RQ job is found abandoned (heartbeat) and retried once; units it finished are
  skipped. A unit is tried at most :data:`~lib.jobs.volume_steps.MAX_ATTEMPTS` times, then the job fails
  naming it.
- Redis restarted (queue lost), API restarted, job resubmitted: :meth:`VolumeJobs.reconcile` queues
  again every batch with units not done that no live RQ job holds. It runs on submit, on
  ``GET /jobs/{id}`` and when the API starts.
- cancel: the job is marked CANCELLED; queued batches are taken off the queue, a running batch stops
  before its next unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job

from ..configs.spec import StructureSpec
from ..db.models import Image, VolumeJob, utcnow
from ..db.store import Database
from ..errors import InvalidRequest, NotFound, check_model
from ..infers.predict import resampling_zoom
from ..volumes.blocks.plan import BlockPlan, VolumeRequest
from ..volumes.outputs import VolumeOutput
from ..volumes.regions import voxel_size, zyx
from ..volumes.store import chunks_for
from .client import ACTIVE, JobClient
from .queues import JOB_KINDS, SERIALIZER
from .volume_steps import MAX_ATTEMPTS, STEPS, Predict, Transitions, enqueue, rq_job_id, step_named, unit_rows

logger = logging.getLogger(__name__)

JOB_PREFIX = "vol-"


def is_volume_job(job_id: str) -> bool:
    return job_id.startswith(JOB_PREFIX)


def _voxel_size_nm(image: Image) -> tuple[float, ...] | None:
    return tuple(1000.0 * v for v in image.voxel_size_um) if image.voxel_size_um else None


class VolumeJobs:
    """The API's side: submit, reconcile, cancel and describe volume jobs."""

    def __init__(self, db: Database, jobs: JobClient, workdir: str, specs: dict[str, StructureSpec]):
        self.db, self.jobs, self.specs = db, jobs, specs
        self.transitions = Transitions(db)
        self.root = os.path.join(workdir, "volume_jobs")

    # submitting ----------------------------------------------------------------------------
    def submit(self, image_id: str, model: str, request: dict[str, Any], owner: str | None = None) -> VolumeJob:
        """Plan and queue ``model`` over ``image_id`` (or resume the job that computes the same; its first
        submitter stays its ``owner``)."""
        spec = self.specs[check_model(model, self.specs)]
        image = self.db.image(image_id)
        if image is None or not image.storage_uri or not image.shape:
            raise NotFound(f"image '{image_id}' is not in the volume store")
        shape = zyx(image.shape)
        checked = VolumeRequest.parse(spec, request, shape)
        if resampling_zoom(spec, _voxel_size_nm(image)) is not None:
            raise InvalidRequest(
                f"'{image_id}' has voxels of {image.voxel_size_um} µm, far from the model's "
                f"{[v / 1000 for v in spec.voxel_size_nm or ()]} µm; whole-volume jobs run on the image's grid, "
                "so resample the volume first (interactive /infer/ resamples regions)"
            )
        chunks = zyx(image.chunks or chunks_for(shape))
        post = checked.post
        plan = BlockPlan.make(shape, chunks, spec.patch_size, checked.roi, checked.block)
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
        candidate = VolumeJob(
            id=job_id, key=key, image_id=image_id, model=model, model_version_id=version.id, params=params,
            plan=plan.to_json(), folder=folder, step=STEPS[0].name, status="RUNNING", owner=owner,
        )  # fmt: skip
        VolumeOutput(folder).create(shape, plan.chunks, voxel_size(image.voxel_size_um))
        job, created = self.db.add_volume_job(candidate, unit_rows(job_id, plan))
        if not created:
            VolumeOutput(folder).remove()
            if job.status in ("FAILED", "CANCELLED"):
                self.transitions.resume(job.id)
            elif job.status == "RUNNING":
                self.db.update_volume_job(job.id, resumed_at=utcnow())
        self.reconcile(job.id)
        return self.db.volume_job(job.id) or job  # as it stands now (the row read before, if it was deleted since)

    # keeping the queue in step with SQL ----------------------------------------------------
    def reconcile(self, job_id: str) -> None:
        """Queue every batch of the job's current step that has units not done and no live RQ job."""
        job = self.db.volume_job(job_id)
        step = step_named(job.step) if job is not None else None
        if job is None or job.status != "RUNNING" or step is None:
            return
        queue = JOB_KINDS["volume"].queue
        self.jobs.queues[queue].started_job_registry.cleanup()  # abandoned jobs: retried or failed
        rows = {row.index: row for row in self.db.volume_blocks(job.id, step.name)}
        waiting = [b for b in step.batches(BlockPlan.from_json(job.plan)) if any(not step.check(rows[i]) for i in b)]
        ids = [rq_job_id(job.id, step, b) for b in waiting]
        # one round trip for all of them (a large volume has hundreds of batches)
        fetched = Job.fetch_many(ids, connection=self.jobs.connection, serializer=SERIALIZER)
        for batch, existing in zip(waiting, fetched):
            if existing is not None and existing.get_status(refresh=False) in ACTIVE:
                continue
            spent = [i for i in batch if not step.check(rows[i]) and rows[i].attempts >= MAX_ATTEMPTS]
            if spent:
                row = rows[spent[0]]
                reason = row.error or "its worker died each time (killed, or out of memory)"
                self.fail(job.id, f"block {spent[0]} of step {step.name} failed {row.attempts} times: {reason}")
                return
            enqueue(self.jobs, job, step, batch)

    def reconcile_running(self) -> None:
        """On API start: queue again what a restarted Redis may have lost."""
        for job in self.db.volume_jobs(status="RUNNING"):
            try:
                self.reconcile(job.id)
            except RedisError as e:
                logger.warning(f"could not queue volume job {job.id} again (Redis unavailable: {e})")

    def fail(self, job_id: str, error: str) -> None:
        self.transitions.end(job_id, "FAILED", error)

    def cancel(self, job_id: str) -> VolumeJob:
        job = self._job(job_id)
        step = step_named(job.step)
        if self.transitions.end(job.id, "CANCELLED", "cancelled") and step is not None:
            for batch in step.batches(BlockPlan.from_json(job.plan)):
                rq = self.jobs.job(rq_job_id(job.id, step, batch))
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
            rows = [b for b in blocks if b.step == step.name]
            steps[step.name] = {
                "done": sum(step.check(b) for b in rows),
                "total": len(rows),
                "failed": sum(b.status == "FAILED" for b in rows),
                "running": sum(b.status == "RUNNING" for b in rows),
            }
        predicted = [b for b in blocks if b.step == Predict.name]
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
                "blocks_done": steps[Predict.name]["done"],
                "blocks_total": steps[Predict.name]["total"],
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


def output_folder(db: Database, image_id: str, model: str) -> str | None:
    """The output of the newest finished job of ``model`` on ``image_id``."""
    done = db.volume_jobs(image_id=image_id, model=model, status="DONE")
    return VolumeOutput(done[0].folder).zarr_path if done else None
