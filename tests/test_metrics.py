"""Voxel metrics against counts worked out by hand."""

import numpy as np
import pytest

from lib.metrics import detection_scores, instance_scores, roc_auc, skeleton_scores, voxel_scores


def test_hand_counted_case():
    pred = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    true = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    # tp = 2, fp = 2, fn = 1
    s = voxel_scores(pred, true)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(4 / 7)
    assert s["foreground_iou"] == pytest.approx(2 / 5)


def test_mask_ignores_unlabelled_voxels():
    pred = np.array([1, 1, 1, 0])
    true = np.array([1, 0, 0, 0])
    mask = np.array([True, False, False, True])  # the two false positives are unlabelled
    s = voxel_scores(pred, true, mask)
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and s["voxels"] == 2


def test_empty_prediction_and_target():
    s = voxel_scores(np.zeros(5), np.zeros(5))
    assert s["f1"] == 1.0 and s["foreground_iou"] == 1.0


def test_all_wrong():
    s = voxel_scores(np.array([1, 0]), np.array([0, 1]))
    assert s["f1"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0


def test_dice_is_f1():
    s = voxel_scores(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert s["dice"] == s["f1"] == pytest.approx(0.5)


def test_roc_auc_by_hand():
    # positives score 0.9, 0.4; negatives 0.5, 0.1 → pairs won: (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3 of 4
    probs = np.array([0.9, 0.4, 0.5, 0.1])
    true = np.array([1, 1, 0, 0])
    assert roc_auc(probs, true) == pytest.approx(3 / 4)
    # a tie between a positive and a negative counts one half
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    # the mask drops the negative that outranked a positive
    assert roc_auc(probs, true, np.array([True, True, False, True])) == pytest.approx(1.0)
    assert np.isnan(roc_auc(probs, np.ones(4)))


def test_skeleton_scores_of_a_line():
    true = np.zeros((1, 7, 9), np.uint8)
    true[0, 2:5, 1:8] = 1  # a 3-voxel-thick bar; its skeleton is the middle row, 7 voxels (x 1..7)
    pred = np.zeros_like(true)
    pred[0, 3, 1:5] = 1  # finds x 1..4 of the centreline and nothing false
    s = skeleton_scores(pred, true)
    assert s["skeleton_precision"] == pytest.approx(1.0)  # every predicted centreline voxel lies in the bar
    assert s["skeleton_recall"] == pytest.approx(4 / 7)
    assert s["cl_dice"] == pytest.approx(2 * (4 / 7) / (1 + 4 / 7))


def test_instance_matching_by_hand():
    true = np.zeros((1, 4, 12), np.uint16)
    true[0, :, 0:4] = 1  # 16 voxels
    true[0, :, 6:8] = 2  # 8 voxels
    pred = np.zeros_like(true)
    pred[0, :, 0:3] = 5  # IoU with 1: 12/16 = 0.75
    pred[0, :, 7:10] = 9  # IoU with 2: 4/(8+12-4) = 0.25 → not a match at 0.5
    pred[0, :, 11] = 3  # a false object
    s = instance_scores(pred, true)
    assert (s["true_objects"], s["predicted_objects"]) == (2, 3)
    # at IoU 0.5: TP 1, FP 2, FN 1
    assert s["instance_precision"] == pytest.approx(1 / 3)
    assert s["instance_recall"] == pytest.approx(1 / 2)
    assert s["instance_f1"] == pytest.approx(2 / 5)
    # the 0.75 match counts at thresholds 0.50..0.75 (6 of 10): AP = (6 * 1/4 + 4 * 0) / 10
    assert s["ap"] == pytest.approx(0.15)
    assert s["mean_matched_iou"] == pytest.approx(0.75)


def test_detection_and_cremi_distances_by_hand():
    true = np.zeros((1, 1, 10), np.uint8)
    true[0, 0, [1, 2]] = 1  # one object
    true[0, 0, 8] = 1  # another, missed
    pred = np.zeros_like(true)
    pred[0, 0, 2] = 1  # touches the first object
    pred[0, 0, 5] = 1  # a false detection
    s = detection_scores(pred, true, spacing=(1.0, 1.0, 2.0))
    assert (s["detection_precision"], s["detection_recall"]) == (0.5, 0.5)
    assert s["detection_f1"] == pytest.approx(0.5)
    # predicted voxels to the nearest true voxel: x2 → 0, x5 → 3 voxels (to x2 or x8) = 6 µm → mean 3
    assert s["fp_distance"] == pytest.approx(3.0)
    # true voxels to the nearest predicted: x1 → 1 voxel = 2, x2 → 0, x8 → 3 voxels = 6 → mean 8/3
    assert s["fn_distance"] == pytest.approx(8 / 3)
    assert s["cremi_distance"] == pytest.approx((3 + 8 / 3) / 2)


def test_sparse_labels_are_ignored_by_detection():
    true = np.zeros((1, 1, 6), np.uint8)
    pred = np.zeros_like(true)
    pred[0, 0, 4] = 1  # in a region nobody labelled
    mask = np.ones_like(true, dtype=bool)
    mask[0, 0, 3:] = False
    assert detection_scores(pred, true, mask=mask)["detection_precision"] == 1.0
    assert detection_scores(pred, true)["detection_precision"] == 0.0
