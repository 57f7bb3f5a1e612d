"""Whole-volume prediction: test-time augmentation undoes every flip and rotation it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.configs.registry import SPECS
from lib.infers.predict import Predictor


class PositionDependent(torch.nn.Module):
    """A 'network' whose output depends on where a voxel is: a wrong inverse transform would show."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 8 - 4


@pytest.mark.parametrize("tta", [8, 16])
def test_tta_variants_are_inverted_exactly(tta):
    spec = SPECS["mitochondria"]
    rng = np.random.default_rng(0)
    volume = rng.random((8, 40, 40)).astype(np.float32)
    volume[:, :10, :5] += 3  # an asymmetric bright corner
    plain = Predictor(PositionDependent(), spec).probabilities(volume, tta=1)
    augmented = Predictor(PositionDependent(), spec).probabilities(volume, tta=tta)
    # a pointwise network commutes with flips/rotations, so correct inverses reproduce the plain output
    np.testing.assert_allclose(augmented, plain, atol=1e-5)


def test_a_check_before_each_forward_pass_stops_a_prediction_midway():
    """What a worker does when its job is cancelled: the check raises, and no further window is predicted."""
    from lib.infers.predict import before_each_forward
    from lib.trainers.supervised import TrainingStopped

    calls = []

    def check():
        calls.append(len(calls))
        if len(calls) == 3:
            raise TrainingStopped("stopped on request")

    volume = np.zeros((8, 200, 200), np.float32)  # several of mitochondria's windows, 2 per forward pass
    with before_each_forward(check), pytest.raises(TrainingStopped):
        Predictor(PositionDependent(), SPECS["mitochondria"]).probabilities(volume, tta=8)
    assert len(calls) == 3
    Predictor(PositionDependent(), SPECS["mitochondria"]).probabilities(volume)  # outside the block: no check
    assert len(calls) == 3


def test_tta_rejects_other_counts():
    with pytest.raises(ValueError, match="tta"):
        Predictor(PositionDependent(), SPECS["axon"]).probabilities(np.zeros((4, 8, 8), np.float32), tta=4)


def test_a_region_predicts_the_same_however_the_volume_was_cut(tmp_path):
    """A region served from the store with context, normalised by its image's statistics, predicts exactly
    what the same voxels cut from the whole file predict; normalising the region by itself (as every
    path did before the store) does not."""
    from conftest import APP_DIR, SAMPLE_DATA

    from lib.datastore import MicroscopyDatastore
    from lib.db.engine import upgrade
    from lib.db.store import Database
    from lib.networks import load_weights
    from lib.transforms.intensity import intensity_stats
    from lib.transforms.io import read_volume

    spec = SPECS["axon"]
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    (tmp_path / "studies").mkdir()
    ds = MicroscopyDatastore(
        str(tmp_path / "studies"), str(tmp_path / "w"), Database(url), SPECS, region_size=(32, 64, 64)
    )
    ds.add_image("chunk", str(SAMPLE_DATA / "trailmap_chunk.nrrd"), {})
    whole = read_volume(str(SAMPLE_DATA / "trailmap_chunk.nrrd")).array
    network, _ = load_weights(str(APP_DIR / "model" / "axon.pt"), "cpu")
    data = ds.read_region("chunk_block_z32_y64_x0", tuple(p // 2 for p in spec.patch_size))
    assert data.read_roi.shape != data.region_roi.shape and data.read_roi.shape != whole.shape
    served = Predictor(network, spec, stats=data.stats).segment(data.array, inner=data.inner)
    cut = Predictor(network, spec, stats=intensity_stats(whole)).segment(whole[data.read_roi.slices], inner=data.inner)
    assert served.sum() > 100
    np.testing.assert_array_equal(served, cut)
    alone = Predictor(network, spec).segment(data.array[data.inner])  # the region normalised by itself
    assert (alone != served).mean() > 0.01
