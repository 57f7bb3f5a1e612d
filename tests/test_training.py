"""The training loop as a plain function, on a small crop of real ssTEM data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from lib.configs.registry import SPECS
from lib.configs.spec import DataSource
from lib.networks import load_weights
from lib.trainers.augmentation import training_transforms
from lib.trainers.data import PatchSampler, TrainingVolume, load_source
from lib.trainers.losses import masked_bce_dice
from lib.trainers.supervised import TrainingPlan, TrainingStopped, train_segmentation
from lib.transforms.labels import map_labels


def test_trailmap_label_mapping_masks_unlabelled_and_the_edge_band():
    """0 unlabelled and 4 (the background ring TRAILMAP draws around each axon) are neither trained nor scored."""
    raw = np.array([0, 1, 2, 3, 4])
    target, mask = map_labels(raw, SPECS["axon"].label_map)
    assert target.tolist() == [0, 0, 1, 0, 0]
    assert mask.tolist() == [False, True, True, True, False]


def test_loss_ignores_masked_voxels():
    logits = torch.randn(1, 1, 4, 8, 8)
    target = (torch.rand(1, 1, 4, 8, 8) > 0.5).float()
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[:, :, 1] = True
    other = target.clone()
    other[:, :, 0] = 1 - other[:, :, 0]  # change only unlabelled voxels
    assert masked_bce_dice(logits, target, mask) == pytest.approx(float(masked_bce_dice(logits, other, mask)))


def test_sparse_patches_always_contain_labels():
    spec = SPECS["axon"]
    volume = load_source(str(shared_file("trailmap_cubes_training.h5").parent), spec.recipe.train[0], spec)
    sampler = PatchSampler(
        [volume], spec.patch_size, foreground_fraction=0.0, seed=1, transforms=training_transforms(spec)
    )
    for _ in range(10):
        image, target, mask = sampler.sample()
        assert image.shape == (1, *spec.patch_size)
        assert mask.any()


@pytest.fixture(scope="module")
def membrane_crop():
    spec = SPECS["membrane"]
    folder = str(shared_file("isbi2012_sstem.h5").parent)
    train = load_source(
        folder, DataSource("isbi2012_sstem.h5", "labels/membrane_isbi", region=((0, 8), (0, 192), (0, 192))), spec
    )
    val = load_source(
        folder, DataSource("isbi2012_sstem.h5", "labels/membrane_isbi", region=((8, 16), (320, 512), (320, 512))), spec
    )
    return spec, train, val


def test_training_learns_and_keeps_best_weights(tmp_path, membrane_crop):
    spec, train, val = membrane_crop
    history = []
    out = tmp_path / "membrane.pt"
    final = train_segmentation(
        spec, [train], [val], str(out),
        TrainingPlan(epochs=3, iterations_per_epoch=8, batch_size=2, learning_rate=3e-3),
        on_epoch=lambda s: history.append(s),
    )  # fmt: skip
    assert [s.epoch for s in history] == [1, 2, 3]
    assert history[-1].loss < history[0].loss
    network, meta = load_weights(str(out))
    assert meta["epoch"] == final.best_epoch
    assert meta["validation"]["f1"] == pytest.approx(final.best_metric)
    assert final.best_metric > 0.3  # membranes are ~20 % of voxels: an untrained net scores far lower


def test_training_can_be_stopped(tmp_path, membrane_crop):
    spec, train, val = membrane_crop
    calls = iter(range(100))
    with pytest.raises(TrainingStopped):
        train_segmentation(spec, [train], [val], str(tmp_path / "m.pt"),
                           TrainingPlan(epochs=5, iterations_per_epoch=4, batch_size=1, learning_rate=1e-3),
                           should_stop=lambda: next(calls) >= 3)  # fmt: skip
    assert not (tmp_path / "m.pt").exists()  # stopped before any validation: nothing published


def test_volume_without_labels_is_refused():
    empty = TrainingVolume(
        "x", np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), bool)
    )
    with pytest.raises(ValueError, match="no labelled voxels"):
        PatchSampler([empty], (4, 8, 8), 0.5, 0, training_transforms(SPECS["membrane"]))
