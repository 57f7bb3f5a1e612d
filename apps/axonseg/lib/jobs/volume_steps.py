"""The whole-volume step state machine, used by both sides of the queue: the steps a job goes through,
what one unit of each reads, writes and computes, and every SQL transition of a job and its units.

A job (``volume_jobs``) moves through :data:`STEPS` in order (:mod:`lib.volumes.blocks.steps` computes them).
Every unit of a step (a write block of ``predict`` and ``relabel``, the one ``stitch``, one ``pyramid`` per
output) is a ``volume_blocks`` row: PENDING → RUNNING → DONE, or PENDING again after a failed attempt and
FAILED after :data:`MAX_ATTEMPTS`. A job is RUNNING until it ends DONE, FAILED or CANCELLED, once.

Units go to the train (GPU) queue in batches as RQ jobs ``<job>-<step>-<first unit>``. Step names are what
the database and the RQ job ids hold; :func:`step_named` maps a name to its step object, once, where a name
comes in. Each step is an object in daisy's vocabulary: its units' read and write regions, ``process`` (do
one unit, return the checksum of what it wrote) and ``check`` (is a unit done).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select, update

from ..configs.spec import StructureSpec
from ..db.models import VolumeBlock, VolumeJob, utcnow
from ..db.store import Database
from ..db.transactions import lock_for_write, retry_when_locked, rows_changed
from ..volumes.blocks.plan import BlockPlan, Postprocess
from ..volumes.blocks.steps import build_pyramid, predict_block, relabel_block, stitch
from ..volumes.outputs import OUTPUTS, VolumeOutput
from ..volumes.regions import Roi, voxel_size
from ..volumes.store import downsample_factors
from .client import JobClient

MAX_ATTEMPTS = 2
DONE = "done"  # the step a job is at when all of its steps are done

# device, network and the image reader (normalised voxels of an image box)
PredictInputs = tuple[str, torch.nn.Module, Callable[[Roi], np.ndarray]]


@dataclass
class StepWork:
    """What one job's units need, opened once per batch by the worker (``lib.jobs.volume_worker``)."""

    db: Database
    job: VolumeJob
    spec: StructureSpec
    open_inputs: Callable[[], PredictInputs]

    @functools.cached_property
    def plan(self) -> BlockPlan:
        return BlockPlan.from_json(self.job.plan)

    @functools.cached_property
    def post(self) -> Postprocess:
        return Postprocess(self.job.params["method"], self.job.params["options"], self.spec.voxel_size_nm)

    @functools.cached_property
    def output(self) -> VolumeOutput:
        return VolumeOutput(self.job.folder)

    @functools.cached_property
    def inputs(self) -> PredictInputs:
        """Opened at the first block that predicts, not per block."""
        return self.open_inputs()


class Step:
    """One step of a job: its units, their regions (image voxels), how to do one and whether one is done."""

    name: str

    def units(self, plan: BlockPlan) -> int:
        return 1

    def batches(self, plan: BlockPlan) -> list[list[int]]:
        """The units of this step as they are queued together."""
        return [[i] for i in range(self.units(plan))]

    def read_roi(self, plan: BlockPlan, post: Postprocess, index: int) -> Roi:
        return plan.domain

    def write_roi(self, plan: BlockPlan, index: int) -> Roi:
        return plan.domain

    def process(self, work: StepWork, index: int) -> str:
        raise NotImplementedError

    def check(self, row: VolumeBlock) -> bool:
        """Whether the unit of ``row`` is done (SQL says so: what it wrote is complete and checksummed)."""
        return row.status == "DONE"


class _BlockStep(Step):
    """A step with one unit per write block."""

    def units(self, plan: BlockPlan) -> int:
        return len(plan.blocks())

    def batches(self, plan: BlockPlan) -> list[list[int]]:
        return plan.batches()

    def read_roi(self, plan: BlockPlan, post: Postprocess, index: int) -> Roi:
        return self.write_roi(plan, index)

    def write_roi(self, plan: BlockPlan, index: int) -> Roi:
        return plan.blocks()[index]


class Predict(_BlockStep):
    """Probabilities and block labels of a write block (its windows reach further, into the padded image)."""

    name = "predict"

    def read_roi(self, plan: BlockPlan, post: Postprocess, index: int) -> Roi:
        """The box whose probabilities the block needs: its write box grown by the post-processing's margin."""
        predicted = plan.in_domain(plan.blocks()[index]).grow(post.margin, plan.domain.shape)
        return predicted.shift(plan.domain.offset)

    def process(self, work: StepWork, index: int) -> str:
        device, network, read_image = work.inputs
        params = work.job.params
        batch_size, autocast = int(params.get("sw_batch_size", 2)), bool(params.get("amp", True))
        return predict_block(
            work.plan, index, work.spec, work.post, read_image, network, work.output, device, batch_size, autocast
        )


class Stitch(Step):
    """Joins block labels across block faces: one mapping to object ids, and the job's summary."""

    name = "stitch"

    def process(self, work: StepWork, index: int) -> str:
        summary = stitch(work.plan, work.post, work.output)
        work.db.update_volume_job(work.job.id, summary=summary)
        return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


class Relabel(_BlockStep):
    """Object ids and the structure's mask of a write block, from the mapping."""

    name = "relabel"

    def process(self, work: StepWork, index: int) -> str:
        return relabel_block(work.plan, index, work.post, work.output)


class Pyramid(Step):
    """The downsampled levels of one output (unit ``i``: the ``i``-th of :data:`OUTPUTS`)."""

    name = "pyramid"

    def units(self, plan: BlockPlan) -> int:
        return len(OUTPUTS)

    def process(self, work: StepWork, index: int) -> str:
        image = work.db.image(work.job.image_id)
        size = voxel_size(image.voxel_size_um) if image else None
        levels = build_pyramid(work.output, list(OUTPUTS)[index], downsample_factors(size), size)
        return hashlib.sha256(json.dumps(levels).encode()).hexdigest()


STEPS: tuple[Step, ...] = (Predict(), Stitch(), Relabel(), Pyramid())
_BY_NAME = {step.name: step for step in STEPS}


def step_named(name: str) -> Step | None:
    """The step a persisted name (``volume_jobs.step``, a block row, an RQ job) stands for; None for ``done``."""
    return _BY_NAME.get(name)


def next_step(step: Step) -> str:
    """The name of the step after ``step``: :data:`DONE` after the last."""
    position = STEPS.index(step)
    return STEPS[position + 1].name if position + 1 < len(STEPS) else DONE


def unit_rows(job_id: str, plan: BlockPlan) -> list[VolumeBlock]:
    """A new job's unit rows, every step's, with the voxels each writes."""
    return [
        VolumeBlock(job_id=job_id, step=step.name, index=i, voxels=step.write_roi(plan, i).size)
        for step in STEPS
        for i in range(step.units(plan))
    ]


def rq_job_id(job_id: str, step: Step, batch: list[int]) -> str:
    return f"{job_id}-{step.name}-{batch[0]}"


def enqueue(jobs: JobClient, job: VolumeJob, step: Step, batch: list[int]) -> None:
    """Queue one batch of a step; only ids travel (the worker reads the plan from SQL)."""
    jobs.submit(
        "volume",
        description=f"volume '{job.model}' on '{job.image_id}': {step.name} blocks {batch[0]}-{batch[-1]}",
        meta={"volume_job": job.id, "step": step.name},
        job_id=rq_job_id(job.id, step, batch),
        volume_job=job.id,
        step=step.name,
        indices=batch,
    )


class Transitions:
    """Every SQL transition of a volume job and its units, each one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    def claim(self, job_id: str, step: Step, index: int, worker: str) -> VolumeBlock | None:
        """Claim a unit for one attempt (``attempts`` + 1); None when it is done already (skip it)."""

        def claim() -> VolumeBlock | None:
            with self.db.session() as s, s.begin():
                lock_for_write(s)
                row = s.scalar(_unit(select(VolumeBlock), job_id, step, index).with_for_update())
                if row is None or step.check(row):
                    return None
                row.status, row.attempts, row.worker, row.error = "RUNNING", row.attempts + 1, worker, None
                return row

        return retry_when_locked(claim)

    def finish(self, job_id: str, step: Step, index: int, checksum: str, seconds: float) -> None:
        with self.db.session() as s, s.begin():
            s.execute(
                _unit(update(VolumeBlock), job_id, step, index).values(
                    status="DONE", checksum=checksum, seconds=seconds, finished_at=utcnow(), error=None
                )
            )

    def fail(self, job_id: str, step: Step, index: int, error: str, final: bool) -> None:
        """Record a failed attempt: PENDING again for a retry, or FAILED when ``final``."""
        with self.db.session() as s, s.begin():
            status = "FAILED" if final else "PENDING"
            s.execute(_unit(update(VolumeBlock), job_id, step, index).values(status=status, error=error))

    def advance(self, job_id: str, step: Step) -> str | None:
        """Move a job past ``step`` once every unit of it is done; the next step's name for exactly one
        caller (a compare-and-set on ``step``, so the next step is queued once), else None."""
        following = next_step(step)
        with self.db.session() as s, s.begin():
            pending = s.scalar(
                select(func.count())
                .select_from(VolumeBlock)
                .where(VolumeBlock.job_id == job_id, VolumeBlock.step == step.name, VolumeBlock.status != "DONE")
            )
            if pending:
                return None
            result = s.execute(
                update(VolumeJob)
                .where(VolumeJob.id == job_id, VolumeJob.step == step.name, VolumeJob.status == "RUNNING")
                .values(step=following)
            )
            return following if rows_changed(result) == 1 else None

    def end(self, job_id: str, status: str, error: str | None = None) -> bool:
        """End a running job DONE, FAILED or CANCELLED; False if it had ended (its end is written once)."""
        with self.db.session() as s, s.begin():
            result = s.execute(
                update(VolumeJob)
                .where(VolumeJob.id == job_id, VolumeJob.status == "RUNNING")
                .values(status=status, error=error, finished_at=utcnow())
            )
            return rows_changed(result) == 1

    def resume(self, job_id: str) -> None:
        """Make a failed or cancelled job runnable again: failed units get two fresh attempts."""
        with self.db.session() as s, s.begin():
            s.execute(
                update(VolumeBlock)
                .where(VolumeBlock.job_id == job_id, VolumeBlock.status.in_(["FAILED", "RUNNING"]))
                .values(status="PENDING", attempts=0, error=None)
            )
            s.execute(
                update(VolumeJob)
                .where(VolumeJob.id == job_id)
                .values(status="RUNNING", error=None, finished_at=None, resumed_at=utcnow())
            )


def _unit(statement: Any, job_id: str, step: Step, index: int) -> Any:
    return statement.where(VolumeBlock.job_id == job_id, VolumeBlock.step == step.name, VolumeBlock.index == index)
