"""Whole-volume prediction: test-time augmentation undoes every flip and rotation it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.configs.registry import SPECS
from lib.infers.predict import predict_probabilities


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
    plain = predict_probabilities(PositionDependent(), volume, spec, tta=1)
    augmented = predict_probabilities(PositionDependent(), volume, spec, tta=tta)
    # a pointwise network commutes with flips/rotations, so correct inverses reproduce the plain output
    np.testing.assert_allclose(augmented, plain, atol=1e-5)


def test_tta_rejects_other_counts():
    with pytest.raises(ValueError, match="tta"):
        predict_probabilities(PositionDependent(), np.zeros((4, 8, 8), np.float32), SPECS["axon"], tta=4)
