"""The evaluation protocol: disjoint splits, dense facts that can fail, resampling to the model's voxel size."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from lib.configs.registry import SPECS
from lib.infers.predict import UNKNOWN_VOXEL_SIZE_NM, Predictor, resampling_zoom
from lib.protocol import dense_facts, region_text


def _overlaps(a, b) -> bool:
    """Two recipe sources of one file and label share voxels (None = unbounded)."""
    if (a.file, a.label) != (b.file, b.label):
        return False
    for (a0, a1), (b0, b1) in zip(a.region, b.region):
        lo = max(a0 if a0 is not None else -np.inf, b0 if b0 is not None else -np.inf)
        hi = min(a1 if a1 is not None else np.inf, b1 if b1 is not None else np.inf)
        if lo >= hi:
            return False
    return True


@pytest.mark.parametrize("name", sorted(SPECS))
def test_train_select_and_test_never_share_a_voxel(name):
    recipe = SPECS[name].recipe
    splits = {"train": recipe.train, "select": recipe.select, "test": recipe.test, "cross": recipe.cross}
    assert recipe.select and recipe.test, "every model needs a select and a test split"
    for (n1, s1), (n2, s2) in itertools.combinations(splits.items(), 2):
        for a, b in itertools.product(s1, s2):
            assert not _overlaps(a, b), f"{name}: {n1} {a.file} [{region_text(a.region)}] overlaps {n2}"
    cross_files = {s.file for s in recipe.cross}
    assert not cross_files & {s.file for s in recipe.train}, "cross-microscope volumes must not train"


def test_overlap_check_can_fail():
    a = SPECS["mitochondria"].recipe.train[0]
    assert _overlaps(a, a)


def test_dense_facts_count_false_positives_on_empty_tiles():
    target = np.zeros((3, 64, 64), np.uint8)
    target[0, 2:4, 2:4] = 1  # slice 0: one tile holds foreground, three do not
    mask = np.ones(target.shape, bool)
    mask[2, 0, 0] = False  # slice 2's first tile is not fully labelled: not counted
    prediction = target.copy()
    prediction[1, :16, :32] = 1  # half of one empty tile of slice 1 marked
    facts = dense_facts(prediction, target, mask)
    assert facts["background_tiles"] == 3 + 4 + 3
    assert facts["background_fp_fraction"] == pytest.approx(512 / (10 * 32 * 32))
    assert facts["labelled_fraction"] == pytest.approx(4 / mask.sum())
    assert facts["predicted_fraction"] == pytest.approx((4 + 512) / mask.sum())


# A 3D model of a 5 nm isotropic microscope (planar models never resample z).
ISOTROPIC = replace(SPECS["synapse"], voxel_size_nm=(5.0, 5.0, 5.0))


def test_resampling_only_for_known_and_different_voxel_sizes():
    iso, axon = ISOTROPIC, SPECS["axon"]
    assert not iso.planar
    assert resampling_zoom(iso, None) is None
    assert resampling_zoom(iso, UNKNOWN_VOXEL_SIZE_NM) is None
    assert resampling_zoom(iso, (5.5, 4.5, 5.0)) is None  # within tolerance
    assert resampling_zoom(iso, (50.0, 4.0, 4.0)) == pytest.approx((10.0, 0.8, 0.8))
    assert resampling_zoom(axon, (50.0, 4.0, 4.0)) is None  # the axon model states no voxel size


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 20


def test_resampled_prediction_comes_back_on_the_image_grid():
    """50 nm sections for the 5 nm model: predicted on a 10x finer z grid, returned on the original one."""
    rng = np.random.default_rng(0)
    volume = (rng.random((4, 40, 50)) > 0.5).astype(np.float32)
    volume[:, :20] = 0
    out = Predictor(Identity(), ISOTROPIC, voxel_size_nm=(50.0, 4.0, 4.0)).probabilities(volume)
    assert out.shape == volume.shape
    assert out[:, :18].max() < 0.05 and out[:, 22:].mean() > 0.3  # where the signal was, not smeared
