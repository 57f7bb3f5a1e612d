"""Training losses over masked voxels: unlabelled voxels (sparse annotation) never contribute.

- ``bce_dice``: binary cross-entropy + soft Dice; ``pos_weight`` > 1 weights foreground errors up
  (class weighting for rare structures such as synapses).
- ``focal_dice``: focal loss (Lin et al. 2017; ``gamma`` focuses on hard voxels, ``alpha`` balances
  classes) + soft Dice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_dice(probabilities: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    prob, tgt = probabilities * weight, target * weight
    return 1 - (2 * (prob * tgt).sum() + 1.0) / (prob.sum() + tgt.sum() + 1.0)


def masked_bce_dice(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pos_weight: float = 1.0
) -> torch.Tensor:
    weight = mask.float()
    bce = F.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=torch.tensor(pos_weight, device=logits.device)
    )
    return (bce * weight).sum() / weight.sum().clamp_min(1.0) + soft_dice(torch.sigmoid(logits), target, weight)


def masked_focal_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
) -> torch.Tensor:
    weight = mask.float()
    probabilities = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=torch.tensor(pos_weight, device=logits.device)
    )
    p_true = probabilities * target + (1 - probabilities) * (1 - target)
    focal = (1 - p_true) ** gamma * bce
    if alpha is not None:
        focal = focal * (alpha * target + (1 - alpha) * (1 - target))
    return (focal * weight).sum() / weight.sum().clamp_min(1.0) + soft_dice(probabilities, target, weight)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"bce_dice": masked_bce_dice, "focal_dice": masked_focal_dice}
