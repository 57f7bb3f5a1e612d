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
from conftest import (
    APP_DIR,
    SAMPLE_DATA,
    record_test_image,
    shared_file,
    slicer_client_class,
    wait_for,
    wait_for_job,
)

from lib.activelearning.leases import WithoutLeased
from lib.activelearning.retrain import RetrainTrigger
from lib.activelearning.scores import Scores
from lib.activelearning.strategies import DiverseBatch, ScoreRanked, k_center_greedy
from lib.configs.registry import SPECS
from lib.db.engine import upgrade
from lib.db.store import Database, file_checksum
from lib.errors import Busy
from lib.infers.segmentation import ModelWeights
from lib.networks import build_network, save_weights
from lib.transforms.io import Volume, read_volume, write_volume


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
        db.record_score(image, "epistemic", value, version.id, [1.0])  # as the job stores them
    result = strategy({}, datastore)
    assert result["id"] == "b" and result["unscored"] == 3
    assert jobs.submitted == [("score:mitochondria:epistemic", ["c", "d", "e"])]
    retrained = tmp_path / "v2.pt"
    retrained.write_bytes(b"weights two")
    newer = db.register_model_version("mitochondria", str(retrained), "trained")
    db.record_score("e", "epistemic", 0.2, newer.id, [1.0])
    result = strategy({}, datastore)
    assert result["id"] == "e" and result["top_k"][1]["score"] is None  # only e is fresh
    assert jobs.submitted[-1] == ("score:mitochondria:epistemic", ["a", "b", "c", "d"])
    db.record_score("a", "epistemic", 0.3, newer.id)  # scored before features were kept: scored again
    assert scores_needing(db, datastore, jobs) == ["a", "b", "c", "d"]


def scores_needing(db, datastore, jobs) -> list[str]:
    return Scores(db, jobs, lambda: datastore, ["mitochondria"]).needing_score("mitochondria", "epistemic")


def test_diverse_batches_keep_neighbours_apart_and_away_from_what_others_hold(ranked):
    db, version, datastore, jobs, _, _ = ranked
    # a and b: the two most uncertain, and neighbours in feature space; c: less uncertain, elsewhere
    features = {"a": [1, 0, 0], "b": [0.99, 0.05, 0], "c": [0, 1, 0], "d": [0, 0, 1], "e": [0.7, 0.7, 0]}
    bald = {"a": 0.9, "b": 0.85, "c": 0.6, "d": 0.2, "e": 0.1}
    for image, value in bald.items():
        db.record_score(image, "epistemic", value, version.id, features[image])
    scores = Scores(db, jobs, lambda: datastore, ["mitochondria"])
    diverse, ranked_only = DiverseBatch(scores, "mitochondria"), ScoreRanked("epistemic", scores, "mitochondria")
    assert [t["id"] for t in ranked_only({"top_k": 3}, datastore)["top_k"]] == ["a", "b", "c"]
    assert [t["id"] for t in diverse({"top_k": 3}, datastore)["top_k"]] == ["a", "c", "d"]
    # a second annotator while the first holds a: not its neighbour b, but c
    assert ranked_only({}, WithoutLeased(datastore, {"a"}))["id"] == "b"
    assert diverse({}, WithoutLeased(datastore, {"a"}))["id"] == "c"
    assert jobs.submitted == []
    assert k_center_greedy(["x", "y"], {"x": 1.0, "y": 0.5}, {"x": [1, 0], "y": [1, 0]}, [], 2) == ["x", "y"]


def test_unknown_model_or_method_is_a_clear_404(ranked):
    db, _, datastore, jobs, _, _ = ranked
    scores = Scores(db, jobs, lambda: datastore, ["mitochondria"])
    with pytest.raises(Exception, match="unknown scoring method 'gini'"):
        scores.submit("mitochondria", "gini")
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
    trigger = RetrainTrigger(db, training, every=3, specs=SPECS)
    for image in "abcdefg":
        record_test_image(db, image, shape=(16, 64, 64), structures=list(SPECS))
    for image in "xyz":  # 256 voxels each: too few to hold a part out, however many are labelled
        record_test_image(db, image, structures=list(SPECS))

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
    assert all(save(image, "synapse") is None for image in "xyz") and trigger.new_labels("synapse") == 3
    assert trigger.labelled_voxels("synapse") == 3 * 256 < SPECS["synapse"].recipe.fine_tune.min_labelled_voxels
    assert save("a", "synapse")  # one real region more: now there is enough to hold a part out
    off = RetrainTrigger(db, training, every=0, specs=SPECS)
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


def _sstem_into(studies, crop) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A crop of the VNC ssTEM stack (50 x 4.6 x 4.6 nm) as a NRRD in ``studies``; returns its mito labels."""
    path = shared_file("drosophila_vnc_stack1_xlt512.h5")
    raw = read_volume(str(path), "raw")
    mito = read_volume(str(path), "labels/mito").array[crop]
    studies.mkdir(parents=True, exist_ok=True)
    write_volume(str(studies / "vnc_sstem.nrrd"), Volume(np.ascontiguousarray(raw.array[crop]), raw.spacing))
    return (mito > 0).astype(np.uint8), raw.spacing


@pytest.mark.timeout(1500)  # three fine-tuning runs on the CPU, each checked on the Lucchi++ test split (of a crop)
def test_labelled_sstem_regions_adapt_the_fibsem_model_and_only_what_passes_the_gate_is_served(
    isolated, tmp_path, reference_data
):
    """The loop on a new microscope, through the API with 3D Slicer's client: an annotator labels ssTEM
    regions for the FIB-SEM mitochondria model; the third labelled region (the same region saved twice
    counts once) queues one fine-tuning run (none while it is under way); it is scored on its held-out
    region against the shipped weights, and the run is published exactly when the gate says so, with
    both figures in train_stats, /train/ and the version list. A wrecking run is not published."""
    labels, spacing = _sstem_into(tmp_path / "srv0" / "datastore", np.s_[0:10, 0:384, 0:256])
    server = isolated(
        conf={
            "retrain_after_labels": "3",
            "retrain_params": "iterations=16,max_epochs=2",  # the loop is tested here, not the learning
            "active_learning_model": "mitochondria",
            "region_size": "10,128,128",
        },
        env={"AXONSEG_REFERENCE_DATA": str(reference_data)},
    )
    client = slicer_client_class()[0](server.url)
    regions = [f"vnc_sstem_block_z0_y{y}_x0" for y in (0, 128, 256)]

    def label(region: str) -> None:  # the annotator's correct label: the ground truth
        y = int(region.split("_y")[1].split("_")[0])
        path = tmp_path / f"{region}.nrrd"
        write_volume(str(path), Volume(labels[:, y : y + 128, 0:128], spacing))
        client.save_label(
            region, str(path), "final", {"client_id": "ann1", "label_info": [{"name": "mitochondria", "idx": 1}]}
        )

    def runs() -> list[dict]:
        reply = requests.get(f"{server.url}/train/?all=true", timeout=10)
        return reply.json() if reply.status_code == 200 else []

    versions_url = f"{server.url}/models/mitochondria/versions"
    shipped = requests.get(versions_url, timeout=10).json()[0]["id"]
    label(regions[0])
    label(regions[0])  # saved again: still one labelled region
    label(regions[1])
    assert runs() == []
    label(regions[2])  # the third region queues the run
    assert len(runs()) == 1 and runs()[0]["request"]["client_id"] == "retrain-trigger"
    label("vnc_sstem_block_z0_y0_x128")  # while it is under way, no second run
    assert len(runs()) == 1
    run = wait_for(lambda: (r := runs()[0])["status"] in ("DONE", "ERROR", "STOPPED") and r, 900, "the run")
    assert run["status"] == "DONE", run
    gate = run["gate"]
    stats = client.info()["train_stats"]["mitochondria"]
    assert stats["gate"] == gate and stats["validation_images"] == [regions[2]]  # 3 regions: the last held out
    # Whether 2 short epochs on two ssTEM regions beat the served weights on the third is a coin flip (held-out
    # F1 0.23 vs 0.0 in one code state, 0.0 vs 0.0 in another, from numerical noise alone): the gate must act on
    # what it measured either way.
    if gate["new_score"] > gate["new_baseline"]:  # improved: Lucchi++ is checked too, and decides
        assert gate["original_score"] is not None and gate["original_baseline"] is not None, gate
        within = gate["original_score"] >= gate["original_baseline"] - gate["tolerance"]
        assert stats["published"] is gate["publish"] is within, gate
    else:  # no gain where it was asked for: not published, and the test split is spared
        assert stats["published"] is gate["publish"] is False and gate["original_score"] is None, gate
    served = client.infer("mitochondria", regions[2], {})[1]["model_version"]
    if gate["publish"]:
        version = requests.get(versions_url, timeout=10).json()[-1]
        assert run["model_version"] == version["id"] == served and version["active"]
        assert version["metrics"]["gate"] == gate and version["metrics"]["original_test"] == gate["original_score"]
    else:
        assert run["model_version"] is None and served == shipped

    # A wrecking learning rate cannot gain on the held-out region: the served weights stay.
    task = client.train_start("mitochondria", {"learning_rate": 5.0, "iterations": 2, "max_epochs": 1})
    worse = wait_for(
        lambda: (r := runs()[-1])["id"] == task["id"] and r["status"] in ("DONE", "ERROR", "STOPPED") and r,
        600,
        "the wrecking run",
    )
    assert worse["status"] == "DONE" and worse["model_version"] is None, worse
    assert worse["gate"]["publish"] is False and "held-out F1" in worse["gate"]["reason"], worse["gate"]
    assert worse["gate"]["original_score"] is None  # no gain where it was asked for: the test split is spared
    assert client.info()["train_stats"]["mitochondria"]["published"] is False
    assert client.infer("mitochondria", regions[2], {})[1]["model_version"] == served

    # publish=always overrides the gate; rolling back serves the shipped file again
    task = client.train_start("mitochondria", {"publish": "always", "iterations": 1, "max_epochs": 1})
    forced = wait_for(
        lambda: (r := runs()[-1])["id"] == task["id"] and r["status"] in ("DONE", "ERROR", "STOPPED") and r,
        600,
        "the forced run",
    )
    assert forced["status"] == "DONE" and forced["model_version"] not in (None, shipped, served), forced
    rolled = requests.post(f"{versions_url}/{shipped}/activate", timeout=30)
    assert rolled.status_code == 200 and rolled.json()["active"], rolled.text
    assert client.infer("mitochondria", regions[2], {})[1]["model_version"] == shipped
    assert file_checksum(str(server.workdir / "models" / "mitochondria.pt")) == file_checksum(
        str(APP_DIR / "model" / "mitochondria.pt")
    )
    missing = requests.post(f"{versions_url}/999/activate", timeout=30)
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


def test_random_next_sample_never_fails_under_several_annotators(isolated):
    """MONAI Label's own ``Random`` weights regions by seconds since each was handed out, and raises once all
    were handed out within one second; three annotators pressing Next sample for a few seconds must only
    ever get a region or, when every region is held, an empty reply."""
    server = isolated(conf={"region_size": "32,64,64", "lease_s": "1"}, workers=())
    deadline = time.time() + 6

    def press(name: str) -> list[int]:
        codes = []
        while time.time() < deadline:
            reply = requests.post(f"{server.url}/activelearning/random", json={"client_id": name}, timeout=30)
            codes.append(reply.status_code)
        return codes

    with ThreadPoolExecutor(3) as pool:
        codes = [c for batch in pool.map(press, ("ann1", "ann2", "ann3")) for c in batch]
    assert len(codes) > 30 and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert server.alive()
