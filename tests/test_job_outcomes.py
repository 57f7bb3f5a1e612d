"""How a job ends crosses the queue once and keeps its kind: an error a worker returns reaches the API as the
class it raised, and a training run's final state is written once, by whoever ends it, so a run that failed
never reads DONE, however the API's polls and the worker's end interleave. A real Redis and RQ worker, a
trainer that ends at once: seconds, not minutes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import pytest
from conftest import claimed_redis_db
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from lib.db.engine import upgrade
from lib.db.store import Database
from lib.errors import AxonSegError, InsufficientStorage, InvalidRequest, error_from_result, error_result
from lib.jobs import runtime as worker_runtime
from lib.jobs.client import JobClient
from lib.jobs.queues import SERIALIZER, TRAIN_QUEUE
from lib.jobs.training import FINAL, TrainingRuns


def _kinds(base: type[AxonSegError] = AxonSegError) -> list[type[AxonSegError]]:
    return [k for sub in base.__subclasses__() for k in (sub, *_kinds(sub))]


def test_every_error_kind_with_a_status_of_its_own_round_trips():
    kinds = _kinds()
    shared = Counter(kind.status_code for kind in kinds)
    for kind in kinds:
        crossed = error_from_result(json.loads(json.dumps(error_result(kind(f"a {kind.__name__}")))))
        assert crossed is not None and crossed.status_code == kind.status_code, kind
        assert str(crossed) == f"a {kind.__name__}"
        if shared[kind.status_code] == 1:
            assert type(crossed) is kind
    assert {401, 403, 409, 415, 507} <= {k.status_code for k in kinds}
    assert error_from_result({"model": "axon", "scored": {}}) is None  # a result, not an error
    assert error_from_result({"failed": 3, "error": "a block's reason"}) is None  # no status: not an error result


class _Trainer:
    """Ends at once: DONE, the request's error (a synapse run with no synapse labels) or a crash."""

    def __init__(self, outcome: str):
        self.outcome = outcome

    def resolve(self, params: dict, db=None) -> dict:
        return dict(params)

    def __call__(self, params: dict, datastore, should_stop, on_epoch) -> dict:
        if self.outcome == "refused":
            raise InvalidRequest("no submitted synapse labels")
        if self.outcome == "crash":
            raise RuntimeError("the trainer crashed")
        return {"gate": None}

    def record(self, result: dict, db) -> dict:
        return {}


TRAINERS = {outcome: _Trainer(outcome) for outcome in ("done", "refused", "crash")}
EXPECTED = {"done": "DONE", "refused": "ERROR", "crash": "ERROR"}


def refuse(status_code: int) -> dict:
    """A job that ends with the request's error of ``status_code`` (as a task does)."""
    return error_result(next(k for k in _kinds() if k.status_code == status_code)("refused"))


class _ThreadWorker(SimpleWorker):
    """RQ's in-process worker, on a thread (signals belong to the main thread)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


@pytest.fixture
def queue_and_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/runs.db"
    upgrade(url)
    db = Database(url)
    rt = worker_runtime.Runtime(str(tmp_path / "studies"), str(tmp_path / "work"), {}, TRAINERS, db)  # type: ignore[arg-type]
    monkeypatch.setattr(worker_runtime, "_runtime", rt)
    with claimed_redis_db() as redis_url:
        client = JobClient(redis_url)
        monkeypatch.setattr(client, "require_workers", lambda queue: None)
        yield client, db
    db.dispose()


def _work(client: JobClient, jobs: int) -> threading.Thread:
    worker = _ThreadWorker([client.queues[TRAIN_QUEUE]], connection=client.connection, serializer=SERIALIZER)
    thread = threading.Thread(target=worker.work, kwargs={"max_jobs": jobs, "max_idle_time": 10}, daemon=True)
    thread.start()
    return thread


def test_a_run_that_failed_never_reads_done_while_the_api_polls_it(queue_and_db):
    """60 runs end at once while the API submits and polls them: each ends as its worker ended it, and a final
    state once read never changes."""
    client, db = queue_and_db
    runs = TrainingRuns(db, client, TRAINERS)  # type: ignore[arg-type]
    outcomes = [("done", "refused", "crash")[i % 3] for i in range(60)]
    worker = _work(client, len(outcomes))
    seen: dict[str, list[str]] = {}
    submitted: dict[str, str] = {}

    def poll() -> None:
        for row in db.training_runs():
            seen.setdefault(row.job_id, []).append(runs.sync(row).status)

    for outcome in outcomes:
        run = runs.submit([outcome], {}, enqueue=True)[0]
        submitted[run.job_id] = outcome
        poll()
    deadline = time.monotonic() + 20
    while any(db.training_run(j).status not in FINAL for j in submitted) and time.monotonic() < deadline:
        poll()
    worker.join(15)
    poll()
    for job_id, outcome in submitted.items():
        run = db.training_run(job_id)
        assert run.status == EXPECTED[outcome], (outcome, run.status, run.error, seen[job_id])
        if outcome == "refused":
            assert run.error == "no submitted synapse labels"
            described = client.describe(client.job(job_id))
            assert described["status"] == "ERROR" and described["error"] == "no submitted synapse labels"
        final = [s for s in seen[job_id] if s in FINAL]
        assert set(final) <= {EXPECTED[outcome]}, (outcome, seen[job_id])


def test_an_error_a_worker_returns_is_raised_with_its_kind(queue_and_db):
    client, _ = queue_and_db
    job = client.queues[TRAIN_QUEUE].enqueue(
        "test_job_outcomes.refuse", kwargs={"status_code": 507}, description="refused"
    )
    _work(client, 1).join(15)
    with pytest.raises(InsufficientStorage, match="refused"):
        asyncio.run(client.wait(job, timeout_s=5))
    assert client.describe(job)["status"] == "ERROR"
