"""Training runs: the ``training_runs`` rows kept in step with their queue jobs, and submitting new ones.

One place decides whether training is busy, so the ``/train`` endpoints and the automatic retrain
after new labels (``lib.activelearning.retrain``) follow the same rule: one run at a time unless
the caller asks to queue.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job, JobStatus

from ..db.models import TrainingRun, utcnow
from ..db.store import Database
from ..errors import Busy, InvalidRequest, NotFound
from ..trainers.task import StructureTrainer
from .client import JobClient
from .queues import TRAIN_QUEUE

FINAL = ("DONE", "ERROR", "STOPPED")
_SUBMIT_LOCK = "axonseg:train-submit"


class TrainingRuns:
    def __init__(self, db: Database, jobs: JobClient, trainers: dict[str, StructureTrainer]):
        self.db = db
        self.jobs = jobs
        self.trainers = trainers

    def sync(self, run: TrainingRun) -> TrainingRun:
        """The run as it stands. Its worker writes its final state before the job ends (``lib.jobs.tasks.train``);
        the API writes one only where no worker will: the job was taken off its queue before it started, its
        worker died, or Redis lost it. Both write through the same once-only update, so a run that failed can
        never read DONE."""
        if run.status in FINAL:
            return run
        job = self.jobs.job(run.job_id)
        ended: tuple[str, str | None] | None
        if job is None:
            ended = "ERROR", "the job is no longer in the queue (Redis lost it); start training again"
        else:
            ended = self._ended_without_worker(job)
        if ended is None:
            return self.db.training_run(run.job_id) or run
        status, error = ended
        self.db.update_training_run(run.job_id, status=status, error=error, finished_at=utcnow())
        return self.db.training_run(run.job_id) or run

    def _ended_without_worker(self, job: Job) -> tuple[str, str | None] | None:
        """``(status, error)`` of a job that ended with no worker to write it; None while it runs, or when it
        ended in its worker (which wrote the run's final state first)."""
        status = self.jobs.refresh_status(job)
        if status in (JobStatus.STOPPED, JobStatus.CANCELED):
            return "STOPPED", None
        if status == JobStatus.FAILED:
            error = self.jobs.error_of(job)
            if error and "AbandonedJobError" in error:
                error = f"the worker running this job died ({job.worker_name}); nothing was published"
            return "ERROR", error
        if status == JobStatus.FINISHED:  # the worker wrote how it ended; if not, it cannot have succeeded
            return "ERROR", "the job ended without recording its outcome"
        return None

    def active(self) -> list[TrainingRun]:
        """Submitted or running runs, running ones first."""
        runs = self.db.training_runs(statuses=("SUBMITTED", "RUNNING"))
        active = [r for r in (self.sync(run) for run in runs) if r.status not in FINAL]
        return sorted(active, key=lambda run: run.status != "RUNNING")

    def submit(
        self,
        models: list[str],
        params: dict[str, Any],
        enqueue: bool,
        per_model: dict[str, dict[str, Any]] | None = None,
    ) -> list[TrainingRun]:
        """Queue one run per model; raises :class:`Busy` if training is busy and ``enqueue`` is false.
        ``per_model``: options of one model, over ``params``.

        Each trainer checks its request first (bounds, unknown keys), so a bad request is refused here and
        never queued.
        """
        unknown = [m for m in models if m not in self.trainers]
        if unknown:
            raise NotFound(f"unknown trainer '{unknown[0]}'; available trainers: {', '.join(self.trainers)}")
        requests = {model: {**params, **(per_model or {}).get(model, {})} for model in models}
        for model in models:
            self.trainers[model].resolve(requests[model], self.db)
        self.jobs.require_workers(TRAIN_QUEUE)
        # One lock across API processes: the busy check and the enqueue happen together.
        with self.jobs.connection.lock(_SUBMIT_LOCK, timeout=30, blocking_timeout=10):
            busy = self.active()
            if busy and not enqueue:
                running = ", ".join(f"'{r.model}' ({r.status.lower()})" for r in busy)
                raise Busy(f"training is busy: {running}; wait, stop it, or send enqueue=true to queue this run")
            return [self._submit(model, requests[model]) for model in models]

    def _submit(self, model: str, params: dict[str, Any]) -> TrainingRun:
        job = self.jobs.submit(
            "train",
            description=f"training '{model}'",
            meta={"client_id": params.get("client_id")},
            model=model,
            params=params,
        )
        # the worker may have started it and recorded the run first: then this keeps the worker's row
        self.db.add_training_run(job.id, model, params)
        run = self.db.training_run(job.id)
        if run is None:
            raise NotFound(f"training run '{job.id}' was deleted as it was submitted")
        return run

    def submit_all(self, models: list[str], params: dict[str, Any]) -> list[TrainingRun]:
        """``POST /train/``: a run of each of ``models``, queued one after another. ``params``: options for
        every model, and under a model's name an object of options for it alone (MONAI Label's form; OHIF's
        panel sends the options edited per trainer so)."""
        per_model = {k: v for k, v in params.items() if isinstance(v, dict) and k in self.trainers}
        elsewhere = [k for k in per_model if k not in models]
        if elsewhere:  # e.g. ssl_pretrain: not one of the models this trains
            raise InvalidRequest(
                f"POST /train/ trains {', '.join(models)}; send the options of "
                f"{', '.join(repr(k) for k in elsewhere)} to POST /train/{{name}}"
            )
        common = {k: v for k, v in params.items() if k not in per_model}  # the rest: each trainer checks them
        return self.submit(models, common, True, per_model)
