"""Write access to Redis is not code execution: jobs travel as JSON, and a pickled job runs nothing."""

from __future__ import annotations

import requests
from conftest import wait_for
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from lib.jobs.queues import INFER_QUEUE, SERIALIZER


class CreatesFile:
    """Unpickling this opens ``path`` for writing: a stand-in for any code a pickled payload can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_job_on_our_queue_runs_no_code_and_the_worker_takes_the_next_job(server, tmp_path):
    marker = tmp_path / "unpickled"
    connection = Redis.from_url(server.redis_url)
    # what anyone who can write to Redis can queue: RQ's default (pickle) serializer, on our infer queue
    evil = Queue(INFER_QUEUE, connection=connection).enqueue(
        "lib.jobs.tasks.infer",
        kwargs={"model": CreatesFile(str(marker)), "params": {}},
        meta={"kind": "infer", "payload": CreatesFile(str(marker))},
        description="pickled payload",
    )
    job = Job.fetch(evil.id, connection=connection, serializer=SERIALIZER)
    wait_for(lambda: job.get_status(refresh=True) not in (JobStatus.QUEUED, JobStatus.STARTED), 60, "the worker")
    assert job.get_status() == JobStatus.FAILED
    assert "DeserializationError" in job.latest_result().exc_string
    # the API reads it as JSON too: describing it unpickles nothing
    described = requests.get(f"{server.url}/jobs/{evil.id}", timeout=10)
    assert described.status_code == 200 and described.json()["status"] == "ERROR", described.text
    worker = next(w for w in server.workers if w.queue == INFER_QUEUE)
    assert worker.process.poll() is None  # still alive, and it serves the next (JSON) job
    reply = requests.post(f"{server.url}/infer/axon", params={"image": "trailmap_chunk"}, timeout=120)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("multipart/form-data"), reply.text
    job.refresh()
    workers = {w["name"]: w["pid"] for w in requests.get(f"{server.url}/jobs/workers", timeout=10).json()}
    assert workers[job.worker_name] == worker.process.pid  # the one that refused the pickled job
    assert not marker.exists()
