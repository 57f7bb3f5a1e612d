"""Active-learning scores of one volume under one network: higher means "label this next".

- ``epistemic``: Monte-Carlo dropout (Gal & Ghahramani 2016). ``samples`` forward passes with dropout
  on; the score is the mean voxel entropy of the averaged prediction (predictive entropy). The
  weights are loaded into the same network built with dropout, so any shipped or retrained
  weights can be scored (dropout has no parameters).
- ``tta``: disagreement between test-time-augmented predictions (flips, optionally rot90): the
  mean voxel variance across variants.
- ``dice``: how much an annotator corrected the model: ``1 - Dice(original prediction, final label)``.

Scores average over voxels, so volumes of different sizes compare; the scoring job stores them per
image and model version (``lib.jobs.tasks.score``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..configs.spec import StructureSpec
from ..infers.predict import sliding_window_probabilities, tta_probabilities
from ..networks import build_network
from ..transforms.intensity import IntensityStats, intensity_stats, normalize

SCORING_METHODS = ("epistemic", "tta", "dice")
_EPS = 1e-6


def binary_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def with_dropout(network: torch.nn.Module, spec: StructureSpec, rate: float) -> torch.nn.Module:
    """A copy of ``network`` with dropout layers at ``rate``, left in train mode for sampling.

    Only the dropout layers train; the instance norms keep no running statistics, so nothing else
    behaves differently.
    """
    args = {**spec.network_args(), "dropout": rate}
    sampler = build_network(**args).to(next(network.parameters()).device)
    sampler.load_state_dict(network.state_dict())
    sampler.eval()
    for module in sampler.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.train()
    return sampler


def epistemic_score(
    network: torch.nn.Module,
    array: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
    samples: int = 8,
    rate: float = 0.2,
    seed: int = 0,
    stats: IntensityStats | None = None,
    inner: tuple[slice, slice, slice] | None = None,
) -> float:
    """Mean predictive entropy (bits) over ``samples`` MC-dropout passes of a raw (z, y, x) volume.

    ``stats``: its image's intensity statistics (None: ``array`` is the whole image); ``inner``: the
    region to average over when ``array`` holds it with context.
    """
    image = normalize(array, stats or intensity_stats(array), spec.percentiles, spec.intensity_ceiling)
    sampler = with_dropout(network, spec, rate)
    torch.manual_seed(seed)
    total = np.zeros(image.shape, dtype=np.float32)
    for _ in range(samples):
        total += sliding_window_probabilities(sampler, image, spec, device, eval_mode=False)
    return float(binary_entropy(total / samples)[inner or ...].mean())


def tta_score(
    network: torch.nn.Module,
    array: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
    tta: int = 8,
    stats: IntensityStats | None = None,
    inner: tuple[slice, slice, slice] | None = None,
) -> float:
    """Mean voxel variance of the ``tta`` test-time variants' probabilities (``stats``, ``inner`` as in
    :func:`epistemic_score`)."""
    image = normalize(array, stats or intensity_stats(array), spec.percentiles, spec.intensity_ceiling)
    total = np.zeros(image.shape, dtype=np.float64)
    squares = np.zeros(image.shape, dtype=np.float64)
    for probabilities in tta_probabilities(network, image, spec, device, tta):
        total += probabilities
        squares += probabilities.astype(np.float64) ** 2
    mean = total / tta
    return float(np.clip(squares / tta - mean**2, 0, None)[inner or ...].mean())


def dice_score(original: np.ndarray, final: np.ndarray) -> float:
    """``1 - Dice`` of the model's prediction and the annotator's final label (1 = rewrote everything)."""
    a, b = original > 0, final > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 0.0  # both empty: nothing was corrected
    return float(1 - 2 * int((a & b).sum()) / total)
