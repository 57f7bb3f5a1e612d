"""A worker process: ``PYTHONPATH=apps/axonseg python -m lib.jobs.worker --queues infer --studies ... --workdir ...``.

It runs jobs in its own process (no fork per job), so models loaded by one job serve the next. Compared
with RQ's stock ``SimpleWorker`` it adds what a long GPU job needs:

- a heartbeat thread while a job runs, with a short TTL: if the process dies (``kill -9``, OOM, power),
  its job is found abandoned within ``3 * heartbeat_s`` and failed or retried, never RUNNING forever;
- cooperative cancellation: RQ's stop-job command sets a flag that training iterations and every forward
  pass of sliding-window inference check, so any job ends STOPPED within a pass (seconds), without
  publishing or writing anything of the image it was on;
- re-registration after a Redis restart, so the worker stays visible in ``/jobs/workers``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import uuid

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker.base import WorkerStatus

from ..infers.predict import before_each_forward
from ..machine import default_device
from ..trainers.supervised import TrainingStopped
from .queues import ALL_QUEUES, SERIALIZER
from .runtime import Runtime, configure

logger = logging.getLogger(__name__)


class WarmWorker(SimpleWorker):
    heartbeat_s = 5

    def __init__(self, *args, runtime: Runtime, **kwargs):
        kwargs.setdefault("job_monitoring_interval", self.heartbeat_s)
        super().__init__(*args, **kwargs)
        self.runtime = runtime

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return 3 * self.heartbeat_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.runtime.stop_event.clear()
        execution = self.prepare_execution(job)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat_s):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as e:  # Redis away for a moment: the next beat retries
                    logger.warning(f"heartbeat for job {job.id} failed: {e}")

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            with before_each_forward(self._check_stop):
                self.perform_job(job, queue, execution)
        finally:
            done.set()
            thread.join()
        self.set_state(WorkerStatus.IDLE)

    def kill_horse(self, sig=None) -> None:
        """RQ's stop-job command lands here (from its pubsub thread; RQ's own is a no-op without a horse
        process): ask the job to stop. RQ has noted the job as stopped on request, so the exception that
        :meth:`_check_stop` raises in it ends it STOPPED (never retried), not FAILED."""
        self.runtime.stop_event.set()

    def _check_stop(self) -> None:
        if self.runtime.stop_event.is_set():
            raise TrainingStopped("stopped on request")

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        # After a Redis restart our registration is gone; register again so we stay listed.
        if pipeline is None and not self.connection.exists(self.key):
            logger.warning(f"worker {self.name} is not registered in Redis (restarted?); registering again")
            self.register_birth()
        super().heartbeat(timeout, pipeline)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="axonseg job worker")
    parser.add_argument("--queues", nargs="+", default=list(ALL_QUEUES), choices=ALL_QUEUES)
    parser.add_argument("--studies", default=os.environ.get("AXONSEG_STUDIES", "work/datastore"))
    parser.add_argument("--workdir", default=os.environ.get("AXONSEG_WORKDIR", "work"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--name", default=None, help="worker name (default: host-pid-random)")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")

    runtime = configure(args.studies, args.workdir)
    device = default_device()
    runtime.warm_up(device)
    connection = Redis.from_url(args.redis_url, health_check_interval=10)
    queues = [Queue(name, connection=connection, serializer=SERIALIZER) for name in args.queues]
    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    worker = WarmWorker(
        queues, connection=connection, name=name, runtime=runtime, maintenance_interval=30, serializer=SERIALIZER
    )
    logger.info(f"worker {name} on {device}, queues {args.queues}, models {list(runtime.configs)} loaded")
    worker.work(burst=args.burst, logging_level="INFO")


if __name__ == "__main__":
    main()
