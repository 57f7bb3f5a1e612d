"""Active-learning scores: hand-checked values, and each score responds to what it claims to measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activelearning.scoring import (
    binary_entropy,
    dice_score,
    encoder_features,
    mc_dropout_uncertainty,
    tta_score,
    with_dropout,
)
from lib.configs.registry import SPECS
from lib.infers.predict import Predictor
from lib.networks import build_network

SPEC = SPECS["membrane"]


class Ramp(torch.nn.Module):
    """Logits = image + a ramp along x: not flip-equivariant, so flipped variants disagree."""

    def __init__(self, strength: float):
        super().__init__()
        self.strength = strength

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1], device=x.device) * self.strength
        return (x - 0.5) * 4 + ramp


def test_dice_score_by_hand():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    assert dice_score(a, b) == 0.0  # nothing to correct
    a[0, :2, :2] = 1  # 4 voxels
    b[0, :2, :1] = 1  # 2 voxels, both inside a
    assert dice_score(a, b) == pytest.approx(1 - 2 * 2 / 6)
    assert dice_score(a, np.zeros_like(a)) == 1.0


def test_binary_entropy_is_one_bit_at_one_half_and_zero_when_sure():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])).max() < 1e-4


def test_tta_score_is_zero_for_an_equivariant_network_and_grows_with_disagreement():
    image = np.random.default_rng(0).random((8, 32, 32)).astype(np.float32)
    scores = [tta_score(Predictor(Ramp(s), SPEC), image) for s in (0.0, 1.0, 3.0)]
    assert scores[0] == pytest.approx(0.0, abs=1e-10)
    assert 0 < scores[1] < scores[2]


def test_mc_dropout_samples_dropout_and_bald_is_zero_without_it():
    torch.manual_seed(0)
    network = build_network(**SPEC.network_args())
    image = np.random.default_rng(1).random((8, 64, 64)).astype(np.float32)
    sampler = with_dropout(network, SPEC, 0.3)
    dropouts = [m for m in sampler.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for m in sampler.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    certain = mc_dropout_uncertainty(Predictor(network, SPEC), image, samples=3, rate=0.0)
    again = mc_dropout_uncertainty(Predictor(network, SPEC), image, samples=1, rate=0.0)
    # no dropout: every pass is the same prediction, so the weights tell nothing (BALD 0), the entropy stays
    assert certain["epistemic"] == pytest.approx(0.0, abs=1e-6)
    assert certain["entropy"] == pytest.approx(again["entropy"], rel=1e-5) and certain["entropy"] > 0.01
    noisy = [mc_dropout_uncertainty(Predictor(network, SPEC), image, samples=3, rate=0.5, seed=s) for s in (0, 1)]
    assert noisy[0] != noisy[1] and noisy[0]["epistemic"] > 0  # dropout is really on during sampling
    assert mc_dropout_uncertainty(Predictor(network, SPEC), image, samples=3, rate=0.5, seed=0) == noisy[0]  # seeded
    assert all(n["epistemic"] <= n["entropy"] for n in noisy)  # mutual information never exceeds total entropy


class Coin(torch.nn.Module):
    """A network whose every dropout pass is sure (p near 0 or 1) but which pass says which is a coin toss:
    all uncertainty is about the weights. ``Flat`` is the opposite: every pass says 0.5."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        sign = 1.0 if torch.rand(1, generator=self.generator).item() < 0.5 else -1.0
        return torch.full_like(x, 8.0 * sign)


def test_bald_separates_what_the_model_does_not_know_from_ambiguous_voxels(monkeypatch):
    import lib.activelearning.scoring as scoring

    image = np.random.default_rng(2).random((8, 32, 32)).astype(np.float32)
    monkeypatch.setattr(scoring, "with_dropout", lambda network, spec, rate: Coin())
    disagree = mc_dropout_uncertainty(Predictor(torch.nn.Identity(), SPEC), image, samples=16)

    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    monkeypatch.setattr(scoring, "with_dropout", lambda network, spec, rate: Flat())
    ambiguous = mc_dropout_uncertainty(Predictor(torch.nn.Identity(), SPEC), image, samples=16)
    # both are uncertain in total (near 1 bit), but only the coin's uncertainty is about the weights
    assert disagree["entropy"] > 0.8 and ambiguous["entropy"] > 0.99
    assert disagree["epistemic"] > 0.95 * disagree["entropy"] and ambiguous["epistemic"] < 1e-6


class WindowCounter(torch.nn.Module):
    """Counts the sliding windows a network is run on."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.windows = network, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.network(x)


def test_scores_are_taken_on_the_model_grid():
    """4 ssTEM sections of 50 nm are 40 slices for the 5 nm mitochondria model: two windows deep, not one."""
    spec = SPECS["mitochondria"]
    torch.manual_seed(0)
    network = build_network(**spec.network_args())
    image = np.random.default_rng(3).random((4, 48, 48)).astype(np.float32)
    native, resampled = WindowCounter(network), WindowCounter(network)
    tta_score(Predictor(native, spec), image, tta=8)
    tta_score(Predictor(resampled, spec, voxel_size_nm=(50.0, 5.0, 5.0)), image, tta=8)
    assert resampled.windows == 2 * native.windows == 16
    features = encoder_features(Predictor(network, spec, voxel_size_nm=(50.0, 5.0, 5.0)), image)
    assert len(features) == spec.filters[-1] and all(np.isfinite(features))
