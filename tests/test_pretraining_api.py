"""``ssl_pretrain`` end to end: started with the Slicer client's train call, run by a train worker,
recorded as an encoder version, then fine-tuned from; bad requests are refused before queueing."""

from __future__ import annotations

import requests
from conftest import SAMPLE_DATA, slicer_client_class, wait_for

from lib.networks import load_weights

PRETRAIN = {"structure": "mitochondria", "max_epochs": 2, "iterations_per_epoch": 2, "batch_size": 2}


def _finished(url: str, job_id: str) -> dict:
    return wait_for(
        lambda: (
            (s := requests.get(f"{url}/train/", timeout=10).json())["id"] == job_id
            and s["status"] in ("DONE", "ERROR", "STOPPED")
            and s
        ),
        300,
        f"training run {job_id}",
    )


def test_pretrain_through_the_api_then_fine_tune_from_the_encoder(isolated, tmp_path):
    server = isolated(env={"AXONSEG_VOLUME_ROOTS": str(SAMPLE_DATA)})
    MONAILabelClient, MONAILabelClientException = slicer_client_class()
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="pytest-ssl")

    trainer = client.info()["trainers"]["ssl_pretrain"]
    assert trainer["config"]["structure"][0] == "axon" and "slice_permutation" in trainer["config"]["task"]

    # Bad requests: a clear 4xx, and nothing queued or recorded.
    bad = {
        "task": ({"task": "jigsaw"}, 400, "task must be one of slice_permutation"),
        "structure": ({"structure": "neuron"}, 400, "structure must be one of axon"),
        "traversal": ({"volumes": "../../../etc/passwd"}, 400, "outside the folders"),
        "missing": ({"volumes": str(SAMPLE_DATA / "nope.h5")}, 400, "does not exist"),
        "epochs": ({"max_epochs": "many"}, 400, "max_epochs must be an integer"),
    }
    for name, (params, status, message) in bad.items():
        reply = requests.post(f"{server.url}/train/ssl_pretrain", json={**PRETRAIN, **params}, timeout=30)
        assert reply.status_code == status and message in reply.json()["detail"], (name, reply.text)
    assert requests.get(f"{server.url}/train/?all=true", timeout=10).json() == []

    # Pretraining on the datastore's images (no labels needed), as an annotator would start it in Slicer.
    task = client.train_start("ssl_pretrain", {**PRETRAIN, "task": "slice_permutation"})
    done = _finished(server.url, task["id"])
    assert done["status"] == "DONE", done
    assert done["encoder_version"] is not None and done["model_version"] is None
    assert [e["epoch"] for e in done["epochs"]] == [1, 2]
    stats = client.info()["train_stats"]["ssl_pretrain"]
    assert stats["status"] == "DONE" and "accuracy" in stats["validation"] and len(stats["history"]) == 2
    curve = requests.get(f"{server.url}/train/ssl_pretrain/learning_curve.png", timeout=30)
    assert curve.status_code == 200 and curve.content.startswith(b"\x89PNG")

    # On a volume path given to it (inside AXONSEG_VOLUME_ROOTS), with a reconstruction task.
    task = client.train_start(
        "ssl_pretrain", {**PRETRAIN, "task": "masked", "volumes": str(SAMPLE_DATA / "gala_fibsem.h5")}
    )
    assert _finished(server.url, task["id"])["status"] == "DONE"

    encoders = requests.get(f"{server.url}/encoders/?structure=mitochondria", timeout=10).json()
    assert [(e["id"], e["task"]) for e in encoders] == [
        (done["encoder_version"], "slice_permutation"),
        (encoders[1]["id"], "masked"),
    ]
    assert encoders[0]["modality"].startswith("electron microscopy") and "accuracy" in encoders[0]["metrics"]
    assert "mse" in encoders[1]["metrics"] and encoders[1]["params"]["volumes"] == ["gala_fibsem.h5"]
    assert requests.get(f"{server.url}/encoders/?structure=axon", timeout=10).json() == []

    # Fine-tuning from the encoder version: needs a submitted label.
    image = "ssl_gala"
    client.upload_image(str(SAMPLE_DATA / "gala_fibsem.h5"), image)
    label, _ = client.infer("mitochondria", image, {})
    client.save_label(image, label, "final", {"client_id": "pytest-ssl", "model": "mitochondria"})
    for model, encoder, status, message in (
        ("mitochondria", "9999", 404, "no encoder version 9999"),
        ("membrane", str(done["encoder_version"]), 400, "pretrained for 'mitochondria'"),
        ("mitochondria", str(SAMPLE_DATA / "gala_fibsem.h5"), 400, "not a weights file"),
    ):
        reply = requests.post(f"{server.url}/train/{model}", json={"pretrained_encoder": encoder}, timeout=30)
        assert reply.status_code == status and message in reply.json()["detail"], reply.text
    params = {
        "max_epochs": 2,
        "iterations": 4,
        "batch_size": 1,
        "publish": "always",
        "pretrained_encoder": str(done["encoder_version"]),
        "freeze_encoder_epochs": 1,
    }
    task = client.train_start("mitochondria", params)
    tuned = _finished(server.url, task["id"])
    assert tuned["status"] == "DONE" and tuned["model_version"] is not None, tuned
    _, meta = load_weights(str(server.workdir / "models" / "mitochondria.pt"))
    assert meta["pretrained_encoder"].endswith(encoders[0]["file"])  # the served weights started from it
    assert server.alive()
