"""Segmentation metrics. Foreground IoU means the Jaccard index of the foreground class only."""

from __future__ import annotations

import numpy as np


def voxel_scores(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Voxel precision, recall, F1 (= Dice) and foreground IoU, counted only where ``mask`` is set.

    An empty prediction against an empty target scores 1.0 (nothing to find, nothing found).
    """
    pred = prediction.astype(bool)
    true = target.astype(bool)
    if mask is not None:
        pred, true = pred[mask], true[mask]
    tp = float(np.count_nonzero(pred & true))
    fp = float(np.count_nonzero(pred & ~true))
    fn = float(np.count_nonzero(~pred & true))
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "foreground_iou": iou,
        "voxels": int(pred.size),
    }
