"""Active-learning scores of one volume under one network: higher means "label this next".

- ``epistemic``: BALD (Houlsby et al. 2011; Gal, Islam & Ghahramani 2017), the mutual information
  between the prediction and the weights under Monte-Carlo dropout: the entropy of the averaged
  prediction minus the average entropy of the ``samples`` dropout passes. High where the passes
  disagree (the model does not know), low where they agree that a voxel is ambiguous.
- ``entropy``: the predictive entropy of the same averaged prediction (total uncertainty: what
  BALD measures plus the noise every pass sees alike).
- ``tta``: disagreement between test-time-augmented predictions (flips, optionally rot90): the
  mean voxel variance across variants.
- ``dice``: how much an annotator corrected the model: ``1 - Dice(original prediction, final label)``.

Dropout weights load into the same network built with dropout, so any shipped or retrained weights
can be scored (dropout has no parameters). Volumes are scored on the model's voxel grid, as they are
predicted, and averaged over voxels so volumes of different sizes compare; the scoring job stores
them per image and model version (``lib.jobs.tasks.score``), ``epistemic`` with the region's pooled
encoder features (:func:`encoder_features`) for diversity-aware sampling.

Parameters of a scoring request (:func:`scoring_params`; out of bounds: 400 before anything is queued),
for ``epistemic`` and ``entropy``: ``samples``, dropout passes, an integer in [1, 64] (default 8; each
pass predicts the whole region again, and the mean's error shrinks only as 1/sqrt(samples)); ``rate``,
the dropout probability, in [0, 1) (default 0.2; 0 makes every pass alike, 1 would drop everything).
``tta`` and ``dice`` take none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..configs.spec import StructureSpec
from ..infers.predict import Predictor, resize
from ..networks import build_network
from ..params import Range

SCORING_METHODS = ("epistemic", "entropy", "tta", "dice")
_EPS = 1e-6
# MC-dropout parameters: their defaults and bounds (why: the module docstring).
MC_DROPOUT = {"samples": (8, Range(1, 64, integer=True)), "rate": (0.2, Range(0.0, 1.0, high_open=True))}


def scoring_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters ``method`` scores with, checked (InvalidRequest names one out of bounds): the API
    calls it before queueing, the scoring job on what it was given. Keys ``method`` does not take are
    dropped (they change nothing)."""
    params = params or {}
    if method not in ("epistemic", "entropy"):
        return {}
    where = f" for '{method}' scoring (MC dropout)"
    return {
        name: bounds.check(name, params.get(name, default), where) for name, (default, bounds) in MC_DROPOUT.items()
    }


def binary_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def with_dropout(network: torch.nn.Module, spec: StructureSpec, rate: float) -> torch.nn.Module:
    """A copy of ``network`` with dropout layers at ``rate``, left in train mode for sampling.

    Only the dropout layers train; norms stay in eval mode (batch norm keeps its running statistics).
    """
    args = {**spec.network_args(), "dropout": rate}
    sampler = build_network(**args).to(next(network.parameters()).device)
    sampler.load_state_dict(network.state_dict())
    sampler.eval()
    for module in sampler.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.train()
    return sampler


def _region_mean(voxel_map: np.ndarray, shape: tuple[int, ...], inner: tuple[slice, slice, slice] | None) -> float:
    """Mean of a model-grid map over ``inner`` of the volume's own grid (``shape``)."""
    if voxel_map.shape != tuple(shape):
        voxel_map = resize(voxel_map, shape)
    return float(voxel_map[inner or ...].mean())


def mc_dropout_uncertainty(
    predictor: Predictor,
    array: np.ndarray,
    samples: int = 8,
    rate: float = 0.2,
    seed: int = 0,
    inner: tuple[slice, slice, slice] | None = None,
) -> dict[str, float]:
    """``{"epistemic": BALD, "entropy": predictive entropy}`` (bits per voxel) of a raw (z, y, x) volume
    from ``samples`` MC-dropout passes, on the model's grid.

    ``inner``: the region to average over when ``array`` holds it with context.
    """
    image = predictor.grid_image(array)
    sampler = replace(predictor, network=with_dropout(predictor.network, predictor.spec, rate))
    torch.manual_seed(seed)
    total = np.zeros(image.shape, dtype=np.float32)
    pass_entropy = np.zeros(image.shape, dtype=np.float32)
    for _ in range(samples):
        probabilities = sampler.window_probabilities(image, eval_mode=False)
        total += probabilities
        pass_entropy += binary_entropy(probabilities)
    predictive = binary_entropy(total / samples)
    bald = np.clip(predictive - pass_entropy / samples, 0, None)
    return {
        "epistemic": _region_mean(bald, array.shape, inner),
        "entropy": _region_mean(predictive, array.shape, inner),
    }


@torch.no_grad()
def encoder_features(predictor: Predictor, array: np.ndarray) -> list[float]:
    """The U-Net bottleneck's channels averaged over a raw volume (on the model's grid): where the region
    lies in the model's own feature space, so nearby regions can be told apart from distant ones."""
    from ..trainers.encoder import as_unet, encode

    image = predictor.grid_image(array)
    predictor.network.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(predictor.device)
    return [float(v) for v in encode(as_unet(predictor.network), tensor).mean(dim=(2, 3, 4))[0].cpu()]


def tta_score(
    predictor: Predictor, array: np.ndarray, tta: int = 8, inner: tuple[slice, slice, slice] | None = None
) -> float:
    """Mean voxel variance of the ``tta`` test-time variants' probabilities (``inner`` as in
    :func:`mc_dropout_uncertainty`)."""
    image = predictor.grid_image(array)
    total = np.zeros(image.shape, dtype=np.float64)
    squares = np.zeros(image.shape, dtype=np.float64)
    for probabilities in predictor.tta_variants(image, tta):
        total += probabilities
        squares += probabilities.astype(np.float64) ** 2
    mean = total / tta
    return _region_mean(np.clip(squares / tta - mean**2, 0, None).astype(np.float32), array.shape, inner)


def dice_score(original: np.ndarray, final: np.ndarray) -> float:
    """``1 - Dice`` of the model's prediction and the annotator's final label (1 = rewrote everything)."""
    a, b = original > 0, final > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 0.0  # both empty: nothing was corrected
    return float(1 - 2 * int((a & b).sum()) / total)
