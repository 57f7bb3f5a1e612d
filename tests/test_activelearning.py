"""Active learning: score-ranked strategies on crafted scores, and scoring jobs end to end through the API."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from conftest import APP_DIR, SAMPLE_DATA, record_test_image, slicer_client_class, wait_for, wait_for_job

from lib.activelearning.leases import WithoutLeased
from lib.activelearning.retrain import RetrainTrigger
from lib.activelearning.scores import Scores
from lib.activelearning.strategies import ScoreRanked
from lib.configs.registry import SPECS
from lib.db.engine import upgrade
from lib.db.store import Database, file_checksum
from lib.errors import Busy
from lib.infers.segmentation import ModelWeights
from lib.networks import build_network, save_weights
from lib.transforms.io import read_volume, write_volume


def annotator(server, name: str):
    """3D Slicer's client, as one annotator (the server leases images per client id)."""
    return slicer_client_class()[0](server.url, client_id=name)


class Datastore:
    """Just what a strategy reads: the unlabelled images, in datastore order."""

    def __init__(self, unlabeled: list[str]):
        self.unlabeled = unlabeled

    def get_unlabeled_images(self, *args, **kwargs) -> list[str]:
        return list(self.unlabeled)

    def get_labeled_images(self, *args, **kwargs) -> list[str]:
        return []


class Jobs:
    """Records scoring submissions (the real queue is exercised by the API test below)."""

    def __init__(self):
        self.submitted: list[tuple[str, list[str]]] = []

    def submit_unique(self, kind, key, *, description, image_ids, **kwargs):
        self.submitted.append((key, image_ids))
        return type("Job", (), {"id": f"job{len(self.submitted)}"})(), True


@pytest.fixture
def ranked(tmp_path):
    url = f"sqlite:///{tmp_path}/al.db"
    upgrade(url)
    db = Database(url)
    images = ["a", "b", "c", "d", "e"]
    for image in images:
        record_test_image(db, image)
    weights = tmp_path / "v1.pt"
    weights.write_bytes(b"weights one")
    version = db.register_model_version("mitochondria", str(weights), "shipped")
    datastore, jobs = Datastore(images), Jobs()
    scores = Scores(db, jobs, lambda: datastore, ["mitochondria"])
    yield db, version, datastore, jobs, ScoreRanked("epistemic", scores, "mitochondria"), tmp_path
    db.dispose()


def test_highest_fresh_score_first_with_a_real_top_k(ranked):
    db, version, datastore, jobs, strategy, _ = ranked
    for image, value in {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7, "e": 0.3}.items():
        db.record_score(image, "epistemic", value, version.id)
    db.record_score("a", "tta", 5.0, version.id)  # another method's score does not count
    result = strategy({"top_k": 3}, datastore)
    assert result["id"] == "b" and result["score"] == pytest.approx(0.9)
    assert [(t["id"], t["score"]) for t in result["top_k"]] == [("b", 0.9), ("d", 0.7), ("c", 0.5)]
    assert "scoring_job" not in result and jobs.submitted == []
    # An annotator's lease hides the best image from everyone else: they get the next best.
    assert strategy({}, WithoutLeased(datastore, {"b"}))["id"] == "d"


def test_scores_of_an_older_model_version_are_stale_and_get_rescored(ranked):
    db, version, datastore, jobs, strategy, tmp_path = ranked
    for image, value in {"a": 0.1, "b": 0.9}.items():
        db.record_score(image, "epistemic", value, version.id)
    result = strategy({}, datastore)
    assert result["id"] == "b" and result["unscored"] == 3
    assert jobs.submitted == [("score:mitochondria:epistemic", ["c", "d", "e"])]
    retrained = tmp_path / "v2.pt"
    retrained.write_bytes(b"weights two")
    newer = db.register_model_version("mitochondria", str(retrained), "trained")
    db.record_score("e", "epistemic", 0.2, newer.id)
    result = strategy({}, datastore)
    assert result["id"] == "e" and result["top_k"][1]["score"] is None  # only e is fresh
    assert jobs.submitted[-1] == ("score:mitochondria:epistemic", ["a", "b", "c", "d"])


def test_unknown_model_or_method_is_a_clear_404(ranked):
    db, _, datastore, jobs, _, _ = ranked
    scores = Scores(db, jobs, lambda: datastore, ["mitochondria"])
    with pytest.raises(Exception, match="unknown scoring method 'entropy'"):
        scores.submit("mitochondria", "entropy")
    with pytest.raises(Exception, match="unknown model 'soma'"):
        scores.report("soma", "tta")


def test_scoring_jobs_rank_images_for_next_sample_and_go_stale_with_a_new_version(isolated):
    # synapse scores EM images only: the sample FIB-SEM volume, tiled into 4 regions
    server = isolated(conf={"region_size": "64,64,100"})
    client = slicer_client_class()[0](server.url)
    assert {"epistemic", "tta", "dice"} <= set(client.info()["scoring"])
    assert {"epistemic", "tta"} <= set(client.info()["strategies"])
    reply = requests.post(f"{server.url}/scoring/tta", json={"model": "synapse"}, timeout=30)
    assert reply.status_code == 200, reply.text
    job = reply.json()
    done = wait_for_job(server.url, job["id"])
    assert done["status"] == "DONE", done
    report = requests.get(f"{server.url}/scoring/tta?model=synapse", timeout=10).json()
    assert report["needs_score"] == [] and len(report["scores"]) == 4, report
    assert all(region.startswith("gala_fibsem_block_") for region in report["scores"])  # no light-sheet image
    ranking = list(report["scores"])  # highest first
    assert all(v >= 0 for v in report["scores"].values())

    # Two annotators asking at once get the two best images, never the same one.
    first = annotator(server, "ann1").next_sample("tta", {"model": "synapse"})
    second = annotator(server, "ann2").next_sample("tta", {"model": "synapse"})
    assert [first["id"], second["id"]] == ranking[:2]
    assert first["top_k"][0]["id"] == ranking[0] and "scoring_job" not in first

    # A new model version makes every score stale: the ranking asks for a rescoring job.
    db = Database(f"sqlite:///{server.workdir}/axonseg.db")
    copy = server.workdir / "synapse_v2.pt"
    shutil.copy(APP_DIR / "model" / "synapse.pt", copy)
    with open(copy, "ab") as f:
        f.write(b"\0")  # another checksum, another version
    db.register_model_version("synapse", str(copy), "trained")
    db.dispose()
    stale = requests.get(f"{server.url}/scoring/tta?model=synapse", timeout=10).json()
    assert stale["scores"] == {} and len(stale["needs_score"]) == 4
    # Three more annotators at the same moment: two regions are left unleased, so exactly two get one.
    with ThreadPoolExecutor(3) as pool:
        picks = list(pool.map(lambda n: annotator(server, n).next_sample("tta", {"model": "synapse"}), "xyz"))
    got = [p for p in picks if p.get("id")]
    assert len(got) == 2 and {g["id"] for g in got} == set(ranking[2:]), picks
    assert all(g["unscored"] >= 1 and g["scoring_job"] for g in got)  # stale scores: rescoring was queued


def test_dice_score_measures_how_much_the_annotator_corrected(isolated, tmp_path):
    server = isolated()
    client = slicer_client_class()[0](server.url)
    label_path, _ = client.infer("synapse", "gala_fibsem", {})  # kept as the image's original label
    prediction = read_volume(label_path)
    corrected = prediction.array.copy()
    corrected[: corrected.shape[0] // 2] = 1  # the annotator paints half the volume
    final = tmp_path / "final.nrrd"
    write_volume(str(final), dataclasses.replace(prediction, array=corrected.astype(np.uint8)))
    # as Slicer saves it: segments named after the label the model returned
    client.save_label(
        "gala_fibsem", str(final), "final", {"client_id": "ann1", "label_info": [{"name": "synapse", "idx": 1}]}
    )
    reply = requests.post(f"{server.url}/scoring/dice", json={"model": "synapse"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert wait_for_job(server.url, reply.json()["id"], 120)["status"] == "DONE"
    scores = requests.get(f"{server.url}/scoring/dice?model=synapse", timeout=10).json()["scores"]
    a, b = prediction.array > 0, corrected > 0
    expected = 1 - 2 * (a & b).sum() / (a.sum() + b.sum())
    assert scores == {"gala_fibsem": pytest.approx(expected, abs=1e-6)}
    assert requests.post(f"{server.url}/scoring/nope", json={}, timeout=10).status_code == 404


# --- retraining on submitted labels -----------------------------------------------------------------
class Training:
    """Stands in for the queue: counts submissions and is busy while ``busy`` is set."""

    def __init__(self, db: Database):
        self.db, self.busy, self.runs = db, False, []

    def submit(self, models, params, enqueue):
        if self.busy:
            raise Busy("training is busy")
        job_id = f"job{len(self.runs)}"
        self.db.add_training_run(job_id, models[0], params)
        self.runs.append((models[0], params["trigger"]))
        return [self.db.training_run(job_id)]


def test_retrain_counts_each_region_once_per_structure_and_never_queues_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/rt.db"
    upgrade(url)
    db = Database(url)
    training = Training(db)
    trigger = RetrainTrigger(db, training, every=3, models=list(SPECS))
    for image in "abcdefg":
        record_test_image(db, image)

    def save(image: str, structure: str = "mitochondria", tag: str = "final"):
        db.add_label_version(db.region(image), structure, tag, f"/v/{image}", "0" * 64)
        return trigger.label_saved(image, structure, {}) if tag == "final" else None

    assert save("a") is None and save("b") is None
    assert save("a") is None  # the same region saved again: still 2 labelled regions
    assert save("c", tag="original") is None  # a model's prediction is not an annotator's label
    assert save("c", structure="membrane") is None  # another structure's label does not count
    assert trigger.new_labels("mitochondria") == 2
    training.busy = True
    assert save("c") is None  # 3 regions, but a run is under way: no duplicate
    training.busy = False
    run = save("d")
    assert run is not None and training.runs == [("mitochondria", "4 new final labels")]
    time.sleep(0.01)
    assert trigger.new_labels("mitochondria") == 0  # counting starts again at the run
    assert save("e") is None and save("f") is None
    assert save("g", structure="membrane") is None  # membrane: 2 regions (c, g)
    assert save("a", structure="membrane")  # a label retrains the structure it belongs to
    assert training.runs[-1] == ("membrane", "3 new final labels")
    off = RetrainTrigger(db, training, every=0, models=list(SPECS))
    assert off.label_saved("a", "mitochondria", {}) is None
    db.dispose()


def test_publishing_is_atomic_for_readers(tmp_path):
    """Infer workers reload the served file whenever it changes; none may ever read half a file."""
    spec = SPECS["membrane"]
    weights = ModelWeights(str(APP_DIR / "model" / "membrane.pt"), str(tmp_path / "models" / "membrane.pt"))
    network = build_network(**spec.network_args())
    checksums = set()
    stop, errors, loads = threading.Event(), [], [0]

    def read():
        while not stop.is_set():
            try:
                path = weights.path()
                torch.load(path, weights_only=True)
                loads[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is a torn read
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    archived = []
    for i in range(6):
        with torch.no_grad():
            next(network.parameters()).add_(1.0)
        candidate = str(tmp_path / f"candidate{i}.pt")
        save_weights(candidate, network, spec.network_args(), {"round": i})
        checksums.add(file_checksum(candidate))
        archived.append(weights.publish(candidate))
    stop.set()
    reader.join()
    assert not errors and loads[0] > 0
    assert {file_checksum(p) for p in archived} == checksums  # every version kept for rollback
    assert file_checksum(weights.path()) == file_checksum(archived[-1])
    weights.serve(archived[0])  # roll back
    assert file_checksum(weights.path()) == file_checksum(archived[0])


def test_labels_trigger_one_retrain_then_only_better_weights_publish_and_rollback_restores(isolated):
    # mitochondria labels go on EM images: the sample FIB-SEM volume, tiled into 4 regions
    server = isolated(
        conf={"retrain_after_labels": "2", "active_learning_model": "mitochondria", "region_size": "64,64,100"}
    )
    client = slicer_client_class()[0](server.url)

    def accept_prediction(image: str) -> None:  # an annotator who agrees with the model
        label, _ = client.infer("mitochondria", image, {})
        client.save_label(
            image, label, "final", {"client_id": "ann1", "label_info": [{"name": "mitochondria", "idx": 1}]}
        )

    def runs() -> list[dict]:
        return requests.get(f"{server.url}/train/?all=true", timeout=10).json() if has_runs() else []

    def has_runs() -> bool:
        return requests.get(f"{server.url}/train/", timeout=10).status_code == 200

    accept_prediction("gala_fibsem_block_z0_y0_x0")
    assert runs() == []
    accept_prediction("gala_fibsem_block_z0_y0_x0")  # the same region again counts once
    assert runs() == []
    accept_prediction("gala_fibsem_block_z0_y64_x0")  # the second labelled region queues a fine-tuning run
    triggered = runs()
    assert len(triggered) == 1 and triggered[0]["request"]["client_id"] == "retrain-trigger"
    accept_prediction("gala_fibsem_block_z0_y0_x100")  # while it is under way, no second run
    assert len(runs()) == 1
    requests.delete(f"{server.url}/train/", timeout=60)
    wait_for(lambda: runs()[0]["status"] == "STOPPED", 120, "the triggered run to stop")

    versions = requests.get(f"{server.url}/models/mitochondria/versions", timeout=10).json()
    assert [v["source"] for v in versions] == ["shipped"]
    shipped = versions[0]["id"]

    def train(params: dict) -> dict:
        task = client.train_start(
            "mitochondria", {"max_epochs": 1, "iterations_per_epoch": 2, "batch_size": 1, **params}
        )
        return wait_for(
            lambda: (r := runs()[-1])["id"] == task["id"] and r["status"] in ("DONE", "ERROR", "STOPPED") and r,
            300,
            "training",
        )

    # The labels are the served model's own predictions, so it scores F1 1.0 on them; a wrecking learning
    # rate can only do worse, and the served weights must stay.
    worse = train({"learning_rate": 5.0})
    assert worse["status"] == "DONE" and worse["model_version"] is None, worse
    stats = client.info()["train_stats"]["mitochondria"]
    assert stats["published"] is False and stats["best_metric"] < stats["baseline_metric"]
    assert not (server.workdir / "models" / "mitochondria.pt").exists()
    assert client.infer("mitochondria", "gala_fibsem", {})[1]["model_version"] == shipped

    forced = train({"publish": "always"})
    assert forced["status"] == "DONE" and forced["model_version"] not in (None, shipped), forced
    assert client.infer("mitochondria", "gala_fibsem", {})[1]["model_version"] == forced["model_version"]
    versions = requests.get(f"{server.url}/models/mitochondria/versions", timeout=10).json()
    assert [v["active"] for v in versions] == [False, True]

    rolled = requests.post(f"{server.url}/models/mitochondria/versions/{shipped}/activate", timeout=30)
    assert rolled.status_code == 200 and rolled.json()["active"], rolled.text
    assert client.infer("mitochondria", "gala_fibsem", {})[1]["model_version"] == shipped
    served = file_checksum(str(server.workdir / "models" / "mitochondria.pt"))
    assert served == file_checksum(str(APP_DIR / "model" / "mitochondria.pt"))
    missing = requests.post(f"{server.url}/models/mitochondria/versions/999/activate", timeout=30)
    assert missing.status_code == 404 and "no version 999" in missing.json()["detail"]


def test_next_sample_serves_regions_of_a_large_volume_and_their_labels_land_in_the_image(isolated, tmp_path):
    server = isolated(conf={"region_size": "32,64,64"}, workers=())  # every sample volume is > 2 regions
    client = slicer_client_class()[0](server.url)
    files = {p.name.split(".")[0]: p for p in SAMPLE_DATA.iterdir() if p.suffix in (".h5", ".nrrd", ".tif")}
    samples = [annotator(server, name).next_sample("first", {}) for name in ("ann1", "ann2")]
    assert samples[0]["id"] != samples[1]["id"]  # leased apart
    assert samples[0]["parent"] == samples[1]["parent"] == "gala_fibsem" and samples[0]["offset"] == [0, 0, 0]
    parent = read_volume(str(files["gala_fibsem"]))
    for sample in samples:
        reply = requests.get(f"{server.url}/datastore/image?image={sample['id']}", timeout=30)
        (tmp_path / f"{sample['id']}.nrrd").write_bytes(reply.content)
        served = read_volume(str(tmp_path / f"{sample['id']}.nrrd"))
        region = tuple(slice(o, o + s) for o, s in zip(sample["offset"], served.shape))
        assert np.array_equal(served.array, parent.array[region])
        expected_origin = tuple(o * s for o, s in zip(sample["offset"], parent.spacing))
        assert served.origin == pytest.approx(expected_origin)  # shown where it lies in the volume
        label = (served.array > np.median(served.array)).astype(np.uint8)
        path = write_volume(str(tmp_path / f"{sample['id']}_label.nrrd"), dataclasses.replace(served, array=label))
        client.save_label(sample["id"], path, "final", {"client_id": "ann2", "model": "mitochondria"})
        back = requests.get(f"{server.url}/datastore/label?label={sample['id']}&tag=final", timeout=30)
        (tmp_path / "back.nrrd").write_bytes(back.content)
        assert np.array_equal(read_volume(str(tmp_path / "back.nrrd")).array, label)
        versions = requests.get(f"{server.url}/labels/{sample['id']}/versions", timeout=30).json()
        assert [(v["version"], v["structure"]) for v in versions] == [(1, "mitochondria")]
    # nothing to assemble: the labels were written into the image's label array at their offsets
    whole = requests.get(f"{server.url}/datastore/label?label=gala_fibsem&tag=final", timeout=30)
    assert whole.status_code == 404
