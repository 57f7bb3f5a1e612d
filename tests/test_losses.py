"""Masked losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lib.trainers.losses import masked_bce_dice, masked_focal_dice, soft_dice


def test_masked_voxels_do_not_count():
    logits = torch.tensor([2.0, -2.0, 5.0])
    target = torch.tensor([1.0, 0.0, 0.0])  # the third voxel is badly wrong but unlabelled
    mask = torch.tensor([True, True, False])
    masked = masked_bce_dice(logits, target, mask)
    clean = masked_bce_dice(logits[:2], target[:2], mask[:2])
    assert masked.item() == pytest.approx(clean.item())


def test_bce_part_by_hand():
    logits, target, mask = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([True])
    # BCE(sigmoid(0) = 0.5, 1) = ln 2; soft Dice = 1 - (2*0.5 + 1) / (0.5 + 1 + 1) = 0.2
    assert masked_bce_dice(logits, target, mask).item() == pytest.approx(math.log(2) + 0.2)
    assert soft_dice(torch.tensor([0.5]), target, mask.float()).item() == pytest.approx(0.2)


def test_pos_weight_weights_foreground_errors():
    logits, target, mask = torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([True])
    plain = masked_bce_dice(logits, target, mask)
    weighted = masked_bce_dice(logits, target, mask, pos_weight=3.0)
    bce = -math.log(1 / (1 + math.exp(1.0)))
    assert (weighted - plain).item() == pytest.approx(2 * bce)


def test_focal_reduces_to_bce_and_down_weights_easy_voxels():
    logits = torch.tensor([3.0, -0.2])
    target = torch.tensor([1.0, 1.0])  # an easy voxel and a hard one
    mask = torch.tensor([True, True])
    assert masked_focal_dice(logits, target, mask, gamma=0.0, alpha=None).item() == pytest.approx(
        masked_bce_dice(logits, target, mask).item()
    )
    easy = masked_focal_dice(logits[:1], target[:1], mask[:1], alpha=None) - soft_dice(
        torch.sigmoid(logits[:1]), target[:1], mask[:1].float()
    )
    p = 1 / (1 + math.exp(-3.0))
    assert easy.item() == pytest.approx((1 - p) ** 2 * -math.log(p))
