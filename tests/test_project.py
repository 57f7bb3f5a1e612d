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
    )  # fmt: skip
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
        assert sorted(info["trainers"]) == ["axon", "membrane", "mitochondria", "synapse"]
        assert info["datastore"]["total"] == 3
        seeded = sorted(p.name for p in (workdir / "datastore").iterdir() if p.suffix in (".h5", ".tif", ".nrrd"))
        assert seeded == ["gala_fibsem.h5", "trailmap_chunk.nrrd", "trailmap_original.tif"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked_after == tracked_before, "serving must not modify tracked files"
