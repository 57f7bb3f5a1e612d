"""The queue, visible: what is queued and running, who works, and cancelling.

GET    /jobs/          queue lengths, job ids by state, live workers
GET    /jobs/workers   live workers
GET    /jobs/{id}      one job: state, position in its queue, progress, error
                       (a volume job: blocks done/total per step, voxels/s, ETA)
DELETE /jobs/{id}      cancel (its owner or an admin)
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..auth.identity import caller
from ..errors import Forbidden, NotFound
from ..identifiers import check_name
from ..jobs.client import describe_worker
from ..jobs.volume_jobs import is_volume_job
from .common import Svc

router = APIRouter()


@router.get("/jobs/", summary="Queue lengths, job ids by state, live workers")
async def jobs_overview(svc: Svc):
    return await run_in_threadpool(svc.jobs.overview, caller().may("admin"))


@router.get("/jobs/workers", summary="Live workers and what they run")
async def jobs_workers(svc: Svc):
    machine = caller().may("admin")  # host names and pids are for admins
    return [describe_worker(w, machine) for w in await run_in_threadpool(svc.jobs.workers)]


@router.get("/jobs/{job_id}", summary="One job: state, queue position, progress, error")
async def job_detail(svc: Svc, job_id: str):
    check_name(job_id, "job id")
    if is_volume_job(job_id):
        return await run_in_threadpool(svc.volume_jobs.describe, job_id)
    job = await run_in_threadpool(svc.jobs.job, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}' (finished jobs are kept for a limited time)")
    return await run_in_threadpool(svc.jobs.describe, job)


@router.delete("/jobs/{job_id}", summary="Cancel a queued job or stop a running one (its owner or an admin)")
async def job_cancel(svc: Svc, job_id: str):
    check_name(job_id, "job id")
    if is_volume_job(job_id):
        row = await run_in_threadpool(svc.db.volume_job, job_id)
        _check_owner(job_id, row.owner if row else None)
        volume_job = await run_in_threadpool(svc.volume_jobs.cancel, job_id)
        return await run_in_threadpool(svc.volume_jobs.describe, volume_job.id)
    job = await run_in_threadpool(svc.jobs.job, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}'")
    _check_owner(job_id, job.meta.get("owner"))
    await run_in_threadpool(svc.jobs.cancel, job_id)
    return await run_in_threadpool(svc.jobs.describe, job)


def _check_owner(job_id: str, owner: str | None) -> None:
    if not caller().owns(owner):
        who = owner or "the server"
        raise Forbidden(f"job '{job_id}' was submitted by '{who}'; only they or an admin may cancel it")
