"""The API side of the queue: submit jobs, wait for them without blocking the event loop, cancel, inspect.

Job states are RQ's; :data:`MONAI_STATUS` maps them to the four MONAI Label reports to Slicer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker import BaseWorker

from ..auth.identity import CALLER, caller
from ..errors import JobFailed, JobStopped, JobTimeout, ServiceUnavailable, error_from_result
from .queues import ALL_QUEUES, JOB_KINDS, SERIALIZER

MONAI_STATUS = {
    JobStatus.QUEUED: "SUBMITTED",
    JobStatus.DEFERRED: "SUBMITTED",
    JobStatus.SCHEDULED: "SUBMITTED",
    JobStatus.CREATED: "SUBMITTED",
    JobStatus.STARTED: "RUNNING",
    JobStatus.FINISHED: "DONE",
    JobStatus.FAILED: "ERROR",
    JobStatus.STOPPED: "STOPPED",
    JobStatus.CANCELED: "STOPPED",
}
_CLEANUP_EVERY_S = 1.0
ACTIVE = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED, JobStatus.STARTED)


class JobClient:
    """One per API process. Every Redis error surfaces as :class:`ServiceUnavailable` (503)."""

    def __init__(self, redis_url: str | None = None, connection: Redis | None = None):
        """From a URL (the API), or a worker's own ``connection`` (jobs that queue further jobs)."""
        if connection is None:
            if redis_url is None:
                raise ValueError("a JobClient needs a Redis URL or a connection")
            connection = Redis.from_url(
                redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=10
            )
        self.connection = connection
        self.queues = {name: Queue(name, connection=self.connection, serializer=SERIALIZER) for name in ALL_QUEUES}

    def _unavailable(self, error: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"the job queue (Redis at {self.connection.connection_pool.connection_kwargs.get('host')}) is "
            f"unavailable: {error}. Nothing was submitted; try again when it is back."
        )

    # submitting ----------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        *,
        description: str,
        meta: dict[str, Any] | None = None,
        job_id: str | None = None,
        **kwargs: Any,
    ) -> Job:
        """Queue a job of ``kind`` (``job_id``: a chosen id, e.g. to find it again; else RQ's)."""
        spec = JOB_KINDS[kind]
        try:
            return self.queues[spec.queue].enqueue(
                spec.function,
                kwargs=kwargs,
                job_id=job_id,
                job_timeout=spec.timeout_s,
                result_ttl=spec.result_ttl_s,
                failure_ttl=spec.result_ttl_s,
                retry=Retry(max=spec.retries) if spec.retries else None,
                description=description,
                # who submitted it: only they or an admin may cancel it (None: the server, e.g. a worker)
                meta={"kind": kind, "owner": caller().name if CALLER.get() else None, **(meta or {})},
            )
        except RedisError as e:
            raise self._unavailable(e) from e

    def submit_unique(self, kind: str, key: str, *, description: str, **kwargs: Any) -> tuple[Job, bool]:
        """Submit unless the job last submitted under ``key`` is still queued or running.

        Returns ``(job, submitted)``: the new job, or the one already under way. Atomic across API
        processes (a Redis lock around the check and the enqueue).
        """
        name = f"axonseg:unique:{key}"
        try:
            with self.connection.lock(f"{name}:lock", timeout=30, blocking_timeout=10):
                job_id = self.connection.get(name)  # bytes (the connection does not decode responses)
                job = self.job(job_id.decode() if isinstance(job_id, bytes) else job_id) if job_id else None
                if job is not None and self.refresh_status(job, clean=True) in ACTIVE:
                    return job, False
                job = self.submit(kind, description=description, **kwargs)
                self.connection.set(name, job.id, ex=JOB_KINDS[kind].timeout_s)
                return job, True
        except RedisError as e:
            raise self._unavailable(e) from e

    def workers(self, queue: str | None = None) -> list[BaseWorker]:
        try:
            workers = Worker.all(connection=self.connection, serializer=SERIALIZER)
        except RedisError as e:
            raise self._unavailable(e) from e
        return [w for w in workers if queue is None or queue in w.queue_names()]

    def require_workers(self, queue: str) -> None:
        if not self.workers(queue):
            raise ServiceUnavailable(
                f"no worker is serving the '{queue}' queue; start one with "
                f"`python -m lib.jobs.worker --queues {queue}` (see docs/deployment.md)"
            )

    # waiting -------------------------------------------------------------------------------
    async def wait(self, job: Job, timeout_s: float, poll_s: float = 0.05) -> Any:
        """Await ``job``'s result without blocking the event loop; raises on failure or timeout, and raises an
        error the worker returned as the job's result with its kind (:func:`lib.errors.error_from_result`).

        On timeout the job is cancelled if it has not started, so a dead request leaves no work behind.
        """
        deadline = time.monotonic() + timeout_s
        last_cleanup = 0.0
        while True:
            # Looking for dead workers once a second is enough; the status itself is read every poll.
            clean = time.monotonic() - last_cleanup >= _CLEANUP_EVERY_S
            last_cleanup = time.monotonic() if clean else last_cleanup
            status = await asyncio.to_thread(self.refresh_status, job, clean)
            if status == JobStatus.FINISHED:
                result = job.return_value()
                error = error_from_result(result)
                if error is not None:
                    raise error
                return result
            if status in (JobStatus.STOPPED, JobStatus.CANCELED):
                raise JobStopped(f"{job.description} was stopped (cancelled) before it finished")
            if status == JobStatus.FAILED:
                raise JobFailed(f"{job.description} {MONAI_STATUS[status].lower()}: {self.error_of(job)}")
            if time.monotonic() > deadline:
                position = await asyncio.to_thread(self.position, job)
                await asyncio.to_thread(self.cancel, job.id)
                where = "still queued" if status != JobStatus.STARTED else "still running"
                raise JobTimeout(
                    f"{job.description} did not finish within {timeout_s:g} s ({where}"
                    + (f", position {position + 1} in its queue" if position is not None else "")
                    + "); it was cancelled. Add workers or raise infer_timeout_s."
                )
            await asyncio.sleep(poll_s)

    def refresh_status(self, job: Job, clean: bool = True) -> JobStatus:
        """The job's status; with ``clean``, after abandoned jobs (dead workers) have been failed or retried."""
        try:
            status = job.get_status(refresh=True)
            if clean and status == JobStatus.STARTED and job.origin in self.queues:
                self.queues[job.origin].started_job_registry.cleanup()
                status = job.get_status(refresh=True)
            return status
        except NoSuchJobError:
            return JobStatus.CANCELED
        except RedisError as e:
            raise self._unavailable(e) from e

    # reading -------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=SERIALIZER)
        except NoSuchJobError:
            return None
        except RedisError as e:
            raise self._unavailable(e) from e

    def position(self, job: Job) -> int | None:
        try:
            return self.queues[job.origin].get_job_position(job.id) if job.origin in self.queues else None
        except RedisError:
            return None

    @staticmethod
    def error_of(job: Job) -> str | None:
        """The last line of the job's failure (a person reads this, not the traceback)."""
        result = job.latest_result()
        text = result.exc_string if result is not None and result.exc_string else None
        if not text:
            return None
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else None

    def describe(self, job: Job) -> dict[str, Any]:
        status = self.refresh_status(job)
        # a job that finished with an error (the request's, as its result) did not succeed: ERROR, never DONE
        refused = error_from_result(job.return_value()) if status == JobStatus.FINISHED else None
        error = str(refused) if refused is not None else self.error_of(job) if status == JobStatus.FAILED else None
        return {
            "id": job.id,
            "kind": job.meta.get("kind"),
            "queue": job.origin,
            "description": job.description,
            "state": str(status.value if hasattr(status, "value") else status),
            "status": "ERROR" if refused is not None else MONAI_STATUS.get(status, "ERROR"),
            "position": self.position(job) if status == JobStatus.QUEUED else None,
            "worker": worker_label(job.worker_name, caller().may("admin")),
            "enqueued_at": _ts(job.enqueued_at),
            "started_at": _ts(job.started_at),
            "ended_at": _ts(job.ended_at),
            "retries_left": job.retries_left,
            "progress": job.meta.get("progress"),
            "error": error,
            # "unserialized": RQ's stand-in (raw bytes) for meta that is not JSON, e.g. a pickled job's
            "meta": {k: v for k, v in job.meta.items() if k not in ("kind", "progress", "unserialized")},
        }

    def jobs_by_state(self, queue: str) -> dict[str, list[str]]:
        """Job ids per state in one queue (RQ's registries; finished/failed ones until their TTL)."""
        q = self.queues[queue]
        try:
            q.started_job_registry.cleanup()
            registries = {
                "queued": q.get_job_ids(),
                "started": q.started_job_registry.get_job_ids(),
                "deferred": q.deferred_job_registry.get_job_ids(),
                "scheduled": q.scheduled_job_registry.get_job_ids(),
                "finished": q.finished_job_registry.get_job_ids(),
                "failed": q.failed_job_registry.get_job_ids(),
                "canceled": q.canceled_job_registry.get_job_ids(),
            }
        except RedisError as e:
            raise self._unavailable(e) from e
        return registries

    def overview(self, machine: bool = False) -> dict[str, Any]:
        """Per queue: its length, job counts and job ids by state; and the live workers (``machine``: with
        their host names and pids)."""
        queues = {}
        for name in self.queues:
            states = self.jobs_by_state(name)
            queues[name] = {
                "length": len(states["queued"]),
                "counts": {k: len(v) for k, v in states.items()},
                "jobs": states,
            }
        return {"queues": queues, "workers": [describe_worker(w, machine) for w in self.workers()]}

    # cancelling ----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job | None:
        """Stop a running job inside its worker, or take a queued one off its queue."""
        job = self.job(job_id)
        if job is None:
            return None
        try:
            status = job.get_status(refresh=True)
            if status == JobStatus.STARTED:
                try:
                    send_stop_job_command(self.connection, job.id, serializer=SERIALIZER)
                except InvalidJobOperation:
                    pass  # it finished in between
            elif status in ACTIVE:
                job.cancel()
        except RedisError as e:
            raise self._unavailable(e) from e
        return job


def worker_label(name: str | None, machine: bool) -> str | None:
    """A worker's name, or (``machine`` False) a stable stand-in: the default name holds the host name and pid
    (lib.jobs.worker), which are for admins."""
    if name is None or machine:
        return name
    return "worker-" + hashlib.sha1(name.encode()).hexdigest()[:10]


def describe_worker(worker: BaseWorker, machine: bool = False) -> dict[str, Any]:
    """A worker as the API shows it; ``machine``: with its host name and pid (for admins only)."""
    where = {"hostname": worker.hostname, "pid": worker.pid} if machine else {}
    return {
        "name": worker_label(worker.name, machine),
        **where,
        "queues": worker.queue_names(),
        "state": str(getattr(worker.state, "value", worker.state)),
        "current_job": worker.get_current_job_id(),
        "last_heartbeat": _ts(worker.last_heartbeat),
        "successful_jobs": worker.successful_job_count,
        "failed_jobs": worker.failed_job_count,
    }


def _ts(value) -> str | None:
    return value.isoformat() if value is not None else None
