"""The shipped weights: small, documented, produced by our trainer, and useful on held-out data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import APP_DIR, shared_file

from lib.configs.registry import SPECS
from lib.configs.spec import DataSource
from lib.infers.postprocessing import postprocess
from lib.infers.predict import sliding_window_probabilities
from lib.metrics import voxel_scores
from lib.networks import load_weights
from lib.trainers.data import load_source

MODEL_DIR = APP_DIR / "model"

# A crop of each model's held-out validation region (see the model cards) and the voxel F1 the
# shipped weights must reach on it. An untrained network scores near 0 on all of these.
VNC = "drosophila_vnc_stack1_xlt512.h5"
HELD_OUT = {
    "axon": (DataSource("trailmap_cubes_training.h5", "labels/sparse", region=((576, 640), (0, 64), (0, 64))), 0.7),
    "mitochondria": (DataSource("lucchi_pp_train.h5", "labels/mito", region=((133, 165), (0, 256), (0, 384))), 0.5),
    "synapse": (DataSource(VNC, "labels/synapse", region=((0, 20), (768, 1024), (0, 512))), 0.5),
    "membrane": (DataSource("isbi2012_sstem.h5", "labels/membrane_isbi", region=((0, 30), (384, 512), (0, 256))), 0.5),
}  # fmt: skip
# Labelling every voxel foreground would score F1 0.52 (axon, cube 9), 0.13 (mitochondria),
# 0.02 (synapse) and 0.36 (membrane) on these crops.


def _inside(crop: DataSource, region: DataSource) -> bool:
    """True when ``crop`` lies within ``region`` of the same file and label (None = unbounded)."""
    if (crop.file, crop.label) != (region.file, region.label):
        return False
    return all(
        (lo is None or (a is not None and a >= lo)) and (hi is None or (b is not None and b <= hi))
        for (a, b), (lo, hi) in zip(crop.region, region.region)
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_weights_are_small_and_from_our_trainer(name):
    path = MODEL_DIR / f"{name}.pt"
    assert path.stat().st_size < 30e6
    network, meta = load_weights(str(path))
    assert meta["name"] == name and meta["recipe"] == "reference"
    assert "lib.trainers.cli" in meta["command"]
    assert sum(p.numel() for p in network.parameters()) > 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_card_reports_the_weights_metrics(name):
    card = (MODEL_DIR / f"{name}.md").read_text()
    _, meta = load_weights(str(MODEL_DIR / f"{name}.pt"))
    validation = meta["validation"]
    assert f"| {validation['f1']:.3f} |" in card  # the card quotes the shipped weights' own numbers
    for section in ("Training data and licences", "Recipe", "Validation metrics", "Reproduce"):
        assert f"## {section}" in card
    for source in SPECS[name].recipe.train:
        assert source.file in card
    assert (MODEL_DIR / f"{name}.learning_curve.png").exists()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_held_out_quality(name):
    spec = SPECS[name]
    source, floor = HELD_OUT[name]
    assert any(_inside(source, v) for v in spec.recipe.val), "the quality check must use held-out data"
    torch.set_num_threads(2)
    volume = load_source(str(shared_file(source.file).parent), source, spec)
    network, _ = load_weights(str(MODEL_DIR / f"{name}.pt"))
    probabilities = sliding_window_probabilities(network, volume.image, spec)
    scores = voxel_scores(postprocess(probabilities, spec), volume.target, volume.mask)
    assert scores["f1"] > floor, scores


def test_cards_cover_every_model():
    assert sorted(p.stem for p in Path(MODEL_DIR).glob("*.pt")) == sorted(SPECS)
