"""Queue names and per-kind job options. Interactive inference has a queue of its own so that it never
waits behind training; workers started for ``infer`` never take jobs from ``train``."""

from __future__ import annotations

from dataclasses import dataclass

from rq.serializers import JSONSerializer

# Job arguments, results and meta travel as JSON, never pickle (RQ's default): whoever can write to Redis
# can then queue work, but cannot make a worker or the API run code of theirs by unpickling it.
SERIALIZER = JSONSerializer

INFER_QUEUE = "infer"
TRAIN_QUEUE = "train"
ALL_QUEUES = (INFER_QUEUE, TRAIN_QUEUE)


@dataclass(frozen=True)
class JobKind:
    """How one kind of job is queued.

    Attributes:
        function: dotted path of the job function, imported by the worker.
        queue: the queue it goes on.
        timeout_s: the worker kills the job after this long.
        retries: re-runs after a crash or a killed worker (errors the user caused are never retried).
        result_ttl_s: how long the result stays in Redis after the job ends.
    """

    function: str
    queue: str
    timeout_s: int
    retries: int
    result_ttl_s: int


JOB_KINDS = {
    "infer": JobKind("lib.jobs.tasks.infer", INFER_QUEUE, timeout_s=900, retries=1, result_ttl_s=600),
    "train": JobKind("lib.jobs.tasks.train", TRAIN_QUEUE, timeout_s=7 * 24 * 3600, retries=0, result_ttl_s=30 * 86400),
    "batch_infer": JobKind(
        "lib.jobs.tasks.batch_infer", TRAIN_QUEUE, timeout_s=7 * 24 * 3600, retries=0, result_ttl_s=30 * 86400
    ),
    # Active-learning scores: whole volumes, many forward passes each, so the GPU (train) queue.
    # Whole-volume block batches (lib.jobs.volume_worker): a killed worker's batch is retried once elsewhere.
    "volume": JobKind("lib.jobs.tasks.volume_step", TRAIN_QUEUE, timeout_s=24 * 3600, retries=1, result_ttl_s=86400),
    "score": JobKind("lib.jobs.tasks.score", TRAIN_QUEUE, timeout_s=24 * 3600, retries=0, result_ttl_s=86400),
}
