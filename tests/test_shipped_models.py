"""The shipped weights: small, documented, produced by our trainer, and useful on held-out data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import APP_DIR, shared_file

from lib.configs.registry import CANDIDATE_DIR, RECIPES, SPECS
from lib.configs.spec import DataSource
from lib.infers.postprocessing import postprocess
from lib.infers.predict import Predictor, sliding_window_probabilities
from lib.metrics import voxel_scores
from lib.networks import load_weights
from lib.trainers.data import load_source
from lib.transforms.intensity import intensity_stats
from lib.transforms.io import read_volume

MODEL_DIR = APP_DIR / "model"

# A crop of each model's test split (``lib.protocol``: it chose no epoch, threshold or post-processing)
# and the voxel F1 the shipped weights must reach there. The test also requires beating labelling
# every voxel foreground on the same crop (all background scores F1 0).
VNC = "drosophila_vnc_stack1_xlt512.h5"
TEST_CROPS = {
    "axon": (DataSource("trailmap_cubes_training.h5", "labels/sparse", region=((576, 640), (0, 64), (0, 64))), 0.75),
    "mitochondria": (DataSource("lucchi_pp_train.h5", "labels/mito", region=((135, 165), (0, 256), (0, 384))), 0.7),
    "synapse": (DataSource(VNC, "labels/synapse", region=((0, 20), (768, 1024), (0, 512))), 0.5),
    "membrane": (DataSource("isbi2012_sstem.h5", "labels/membrane_isbi", region=((0, 30), (384, 512), (0, 256))), 0.6),
}  # fmt: skip
CHUNK = "trailmap_example_chunk_unlabeled.h5"


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


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_model_card_reports_the_weights_own_protocol(name):
    folder = MODEL_DIR if name in SPECS else Path(CANDIDATE_DIR)
    card = (folder / f"{name}.md").read_text()
    _, meta = load_weights(str(folder / f"{name}.pt"))
    protocol = json.loads((folder / f"{name}.protocol.json").read_text())
    # the select figure that chose the epoch, and the test figures, both from these weights
    assert f"F1 {meta['validation']['f1']:.3f}" in card
    assert f"**F1 {protocol['pooled']['test']['f1']:.3f}**" in card
    for section in ("Training data and licences", "Splits", "Recipe", "Test metrics", "Dense checks on unlabelled",
                    "Selection metrics", "Reproduce"):  # fmt: skip
        assert f"## {section}" in card
    assert card.index("## Test metrics") < card.index("## Selection metrics")
    recipe = RECIPES[name].recipe
    for source in recipe.train + recipe.test:
        assert source.file in card
    for picture in ("learning_curve", "test_panel"):
        assert (folder / f"{name}.{picture}.png").stat().st_size > 10_000
    for microscope in recipe.microscopes:  # each beside the run that never saw it, or said not to be run
        assert re.search(rf"^\| {microscope} \| .* / (\d\.\d{{3}}|not run) \|", card, re.MULTILINE), microscope


@pytest.mark.parametrize("name", sorted(SPECS))
def test_quality_on_the_test_split(name):
    spec = SPECS[name]
    source, floor = TEST_CROPS[name]
    assert any(_inside(source, t) for t in spec.recipe.test), "the quality check must use the test split"
    torch.set_num_threads(2)
    volume = load_source(str(shared_file(source.file).parent), source, spec)
    network, _ = load_weights(str(MODEL_DIR / f"{name}.pt"))
    probabilities = sliding_window_probabilities(network, volume.image, spec)
    scores = voxel_scores(postprocess(probabilities, spec), volume.target, volume.mask)
    everything = voxel_scores(np.ones_like(volume.target), volume.target, volume.mask)
    assert scores["f1"] > max(floor, everything["f1"] + 0.2), (scores, everything)
    assert scores["precision"] > everything["precision"] + 0.2, (scores, everything)


def _chunk_fraction(network, raw, whole) -> tuple[float, np.ndarray]:
    prediction = postprocess(
        Predictor(network, SPECS["axon"], stats=intensity_stats(whole)).probabilities(raw), SPECS["axon"]
    ).astype(bool)
    return float(prediction.mean()), prediction


def test_axon_does_not_flood_the_unlabelled_chunk():
    """The first weights marked 46 % of this crop axon (its MIP shows a few percent of thin fibres).
    The allowed range is the spec's, justified there; a new acquisition half as bright over the same
    dark level gives the same answer."""
    torch.set_num_threads(2)
    whole = read_volume(shared_file(CHUNK), "raw").array
    raw = whole[100:164, 50:250, 50:250]
    network, _ = load_weights(str(MODEL_DIR / "axon.pt"))
    fraction, prediction = _chunk_fraction(network, raw, whole)
    low, high = SPECS["axon"].recipe.unlabelled[0].plausible
    assert low <= fraction <= high, fraction
    dark = float(np.percentile(whole, 0.5))

    def dimmer(a):
        return (dark + (a.astype(np.float32) - dark) * 0.5).astype(np.uint16)

    _, dim_prediction = _chunk_fraction(network, dimmer(raw), dimmer(whole))
    agreement = 2 * (prediction & dim_prediction).sum() / (prediction.sum() + dim_prediction.sum())
    assert agreement > 0.9, agreement


def test_cards_cover_every_model():
    assert sorted(p.stem for p in Path(MODEL_DIR).glob("*.pt")) == sorted(SPECS)
