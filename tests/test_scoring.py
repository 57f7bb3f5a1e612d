"""Active-learning scores: hand-checked values, and each score responds to what it claims to measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activelearning.scoring import binary_entropy, dice_score, epistemic_score, tta_score, with_dropout
from lib.configs.registry import SPECS
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
    scores = [tta_score(Ramp(s), image, SPEC) for s in (0.0, 1.0, 3.0)]
    assert scores[0] == pytest.approx(0.0, abs=1e-10)
    assert 0 < scores[1] < scores[2]


def test_epistemic_score_samples_dropout_and_is_deterministic_without_it():
    torch.manual_seed(0)
    network = build_network(**SPEC.network_args())
    image = np.random.default_rng(1).random((8, 64, 64)).astype(np.float32)
    sampler = with_dropout(network, SPEC, 0.3)
    dropouts = [m for m in sampler.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for m in sampler.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    certain = epistemic_score(network, image, SPEC, samples=3, rate=0.0)
    again = epistemic_score(network, image, SPEC, samples=1, rate=0.0)
    assert certain == pytest.approx(again, rel=1e-5)  # no dropout: every sample is the same prediction
    noisy = [epistemic_score(network, image, SPEC, samples=3, rate=0.5, seed=s) for s in (0, 1)]
    assert noisy[0] != noisy[1]  # dropout is really on during sampling
    assert epistemic_score(network, image, SPEC, samples=3, rate=0.5, seed=0) == noisy[0]  # seeded
