"""Segmentation metrics, in one place, each named for what it measures.

- Voxel metrics: precision, recall, F1 (= Dice), **foreground IoU** (Jaccard of the foreground class
  only, never the mean of foreground and background IoU), ROC-AUC of the probabilities.
- Centreline metrics for thin structures (axons): skeleton precision (topology precision), skeleton
  recall (topology sensitivity) and clDice (Shit et al., CVPR 2021).
- Instance metrics (mitochondria): one-to-one matching of labelled objects by IoU; precision,
  recall and F1 at IoU >= 0.5, and AP over IoU 0.5:0.05:0.95 in the DSB-2018 / StarDist sense
  (AP_t = TP / (TP + FP + FN) at threshold t, averaged over thresholds; no confidence ranking).
- Segmentation metrics (neurites traced from membranes): variation of information split and merge, and
  adapted Rand error (CREMI's), by ``skimage.metrics``.
- Detection metrics (synapses): connected components matched by overlap; detection precision,
  recall, F1; CREMI-style average distances of false positives and false negatives (physical units).

Every function takes an optional ``mask``: voxels outside it (unlabelled in sparse annotations,
e.g. TRAILMAP's 0) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


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
        "dice": f1,
        "foreground_iou": iou,
        "voxels": int(pred.size),
    }


def roc_auc(probabilities: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the chance that a random foreground voxel outscores a random
    background voxel (ties count one half). NaN when either class is absent."""
    scores = probabilities[mask] if mask is not None else probabilities.ravel()
    true = (target[mask] if mask is not None else target.ravel()).astype(bool)
    positives, negatives = int(true.sum()), int((~true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties (Mann-Whitney U)
    u = ranks[true].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def skeleton_scores(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Centreline agreement for thin, tubular structures.

    skeleton_precision = |skel(P) ∩ T| / |skel(P)| (how much of the predicted centreline is real),
    skeleton_recall = |skel(T) ∩ P| / |skel(T)| (how much of the true centreline was found),
    cl_dice = their harmonic mean. With ``mask``, skeleton voxels outside it are not counted.
    """
    from skimage.morphology import skeletonize

    pred = prediction.astype(bool)
    true = target.astype(bool)
    pred_skeleton = skeletonize(pred).astype(bool) if pred.any() else pred
    true_skeleton = skeletonize(true).astype(bool) if true.any() else true
    if mask is not None:
        pred_skeleton = pred_skeleton & mask
        true_skeleton = true_skeleton & mask
    n_pred, n_true = int(pred_skeleton.sum()), int(true_skeleton.sum())
    precision = float((pred_skeleton & true).sum() / n_pred) if n_pred else float(n_true == 0)
    recall = float((true_skeleton & pred).sum() / n_true) if n_true else 1.0
    cl_dice = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"skeleton_precision": precision, "skeleton_recall": recall, "cl_dice": cl_dice}


def instance_ious(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of every (true object, predicted object) pair of two instance label volumes (0 = background)."""
    true_ids, true_index = np.unique(target, return_inverse=True)
    pred_ids, pred_index = np.unique(prediction, return_inverse=True)
    overlap = np.zeros((len(true_ids), len(pred_ids)), dtype=np.int64)
    np.add.at(overlap, (true_index.ravel(), pred_index.ravel()), 1)
    true_sizes = overlap.sum(axis=1, keepdims=True)
    pred_sizes = overlap.sum(axis=0, keepdims=True)
    union = true_sizes + pred_sizes - overlap
    iou = overlap / np.maximum(union, 1)
    keep_true = true_ids != 0
    keep_pred = pred_ids != 0
    return iou[np.ix_(keep_true, keep_pred)]


def instance_scores(
    prediction: np.ndarray, target: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, float]:
    """Objects matched one-to-one (Hungarian on IoU); counts at each IoU threshold.

    Returns precision/recall/F1 at IoU >= 0.5, ``ap`` (mean of TP / (TP + FP + FN) over
    ``thresholds``), ``mean_matched_iou`` and object counts.
    """
    iou = instance_ious(prediction, target)
    n_true, n_pred = iou.shape
    matched = np.zeros(0)
    if n_true and n_pred:
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols]

    def counts(threshold: float) -> tuple[int, int, int]:
        tp = int((matched >= threshold).sum())
        return tp, n_pred - tp, n_true - tp

    def ratio(a: float, b: float, empty: float) -> float:
        return a / b if b else empty

    tp, fp, fn = counts(0.5)
    ap = float(np.mean([ratio(t, t + f + n, 1.0) for t, f, n in map(counts, thresholds)]))
    return {
        "instance_precision": ratio(tp, tp + fp, float(fn == 0)),
        "instance_recall": ratio(tp, tp + fn, 1.0),
        "instance_f1": ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "ap": ap,
        "mean_matched_iou": float(matched[matched >= 0.5].mean()) if (matched >= 0.5).any() else 0.0,
        "true_objects": n_true,
        "predicted_objects": n_pred,
    }


def detection_scores(
    prediction: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Objects as connected components, matched by any overlap (synapse detection).

    A true object is found if a predicted object touches it; a predicted object is right if it
    touches a true one. Also the CREMI-style distances (in ``spacing`` units): the mean distance of
    predicted voxels to the nearest true voxel (false-positive distance) and of true voxels to the
    nearest predicted voxel (false-negative distance); inf when one side is empty.
    """
    pred = prediction.astype(bool)
    true = target.astype(bool)
    if mask is not None:
        pred, true = pred & mask, true & mask
    structure = np.ones((3,) * pred.ndim, dtype=bool)
    pred_components, n_pred = ndimage.label(pred, structure)
    true_components, n_true = ndimage.label(true, structure)
    found = len(np.unique(true_components[pred & true]))
    right = len(np.unique(pred_components[pred & true]))
    precision = right / n_pred if n_pred else float(n_true == 0)
    recall = found / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def mean_distance(source: np.ndarray, to: np.ndarray) -> float:
        if not source.any():
            return 0.0
        if not to.any():
            return float("inf")
        return float(ndimage.distance_transform_edt(~to, sampling=spacing)[source].mean())

    fp_distance, fn_distance = mean_distance(pred, true), mean_distance(true, pred)
    return {
        "detection_precision": precision,
        "detection_recall": recall,
        "detection_f1": f1,
        "true_objects": n_true,
        "predicted_objects": n_pred,
        "fp_distance": fp_distance,
        "fn_distance": fn_distance,
        "cremi_distance": (fp_distance + fn_distance) / 2,
    }


def fill_gaps(labels: np.ndarray) -> np.ndarray:
    """Each 0 voxel given the id of the nearest labelled pixel of its own z section (sections without ids
    stay 0): a membrane voxel belongs to a neurite beside it, so a segmentation with 0 on its membranes is
    scored as the full tiling CREMI expects. Per section, since ssTEM sections are 10x further apart than
    their pixels."""
    out = labels.copy()
    for z, section in enumerate(labels):
        if section.any() and not section.all():
            nearest = ndimage.distance_transform_edt(section == 0, return_distances=False, return_indices=True)
            out[z] = section[tuple(nearest)]
    return out


def segmentation_scores(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """How a neuron segmentation (object ids) agrees with true object ids, CREMI's way.

    Counted on voxels where ``truth`` is not 0 (0: boundary or unlabelled) and ``mask`` is set; the
    prediction's 0 voxels are filled first (:func:`fill_gaps`). ``voi_split`` = H(prediction | truth), in
    bits: how far true objects are cut into pieces; ``voi_merge`` = H(truth | prediction): how far
    predicted objects join true ones; ``voi`` their sum. ``adapted_rand_error`` = 1 - F-score of the Rand
    precision and recall (``skimage.metrics.adapted_rand_error``; 0 is perfect); skimage's
    ``rand_precision`` falls with splits, ``rand_recall`` with merges. Lower is better for the errors.
    """
    from skimage.metrics import adapted_rand_error, variation_of_information

    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    counted = truth != 0
    if mask is not None:
        counted &= mask
    true_ids = truth[counted].astype(np.int64)
    pred_ids = fill_gaps(prediction)[counted].astype(np.int64)
    if not true_ids.size:
        raise ValueError("no voxel of the truth holds an object id")
    split, merge = variation_of_information(true_ids, pred_ids)
    error, rand_precision, rand_recall = adapted_rand_error(true_ids, pred_ids, ignore_labels=())
    return {
        "voi_split": float(split),
        "voi_merge": float(merge),
        "voi": float(split + merge),
        "adapted_rand_error": float(error),
        "rand_precision": float(rand_precision),
        "rand_recall": float(rand_recall),
        "true_objects": int(len(np.unique(true_ids))),
        "predicted_objects": int(len(np.unique(pred_ids[pred_ids != 0]))),
    }
