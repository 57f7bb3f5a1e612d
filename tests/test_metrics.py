"""Voxel metrics against counts worked out by hand."""

import numpy as np
import pytest

from lib.metrics import (
    detection_scores,
    fill_gaps,
    instance_scores,
    roc_auc,
    segmentation_scores,
    skeleton_scores,
    voxel_scores,
)


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


# --- segmentation (neurites): VOI split/merge, adapted Rand error, by hand ------------------------------
def test_voi_counts_a_merge_as_merge_and_a_split_as_split():
    two = np.array([[[1, 1, 2, 2]]])
    one = np.array([[[5, 5, 5, 5]]])
    merged = segmentation_scores(one, two)  # two true objects predicted as one: H(truth | prediction) = 1 bit
    assert merged["voi_merge"] == pytest.approx(1.0) and merged["voi_split"] == pytest.approx(0.0)
    split = segmentation_scores(np.array([[[1, 2, 3, 4]]]), one)  # one object in four: H(prediction | truth) = 2
    assert split["voi_split"] == pytest.approx(2.0) and split["voi_merge"] == pytest.approx(0.0)
    assert split["predicted_objects"] == 4 and split["true_objects"] == 1


def test_adapted_rand_error_by_hand():
    """Pairs of voxels (ordered, without self-pairs) from the contingency table n_ij: sum n_ij² - n over
    pairs together in both, sum a_i² - n together in the truth, sum b_j² - n together in the prediction."""
    truth = np.array([[[1, 1, 2, 2]]])
    merged = segmentation_scores(np.array([[[5, 5, 5, 5]]]), truth)
    # n_ij = (2, 2): both 8 - 4 = 4; truth 8 - 4 = 4; prediction 16 - 4 = 12
    precision, recall = 4 / 4, 4 / 12
    assert merged["adapted_rand_error"] == pytest.approx(1 - 2 * precision * recall / (precision + recall))  # 0.5
    assert segmentation_scores(np.array([[[7, 7, 3, 3]]]), truth)["adapted_rand_error"] == pytest.approx(0.0)
    assert segmentation_scores(np.array([[[7, 7, 3, 3]]]), truth)["voi"] == pytest.approx(0.0)  # ids may differ


def test_segmentation_scores_ignore_true_zero_and_fill_predicted_membrane_within_the_section():
    prediction = np.array([[[4, 0, 0, 0, 0, 6]], [[0, 0, 0, 0, 0, 0]]])
    assert fill_gaps(prediction).tolist() == [[[4, 4, 4, 6, 6, 6]], [[0, 0, 0, 0, 0, 0]]]  # nearest in its section
    truth = np.array([[[1, 1, 0, 2, 2]], [[1, 1, 0, 2, 2]]])
    scores = segmentation_scores(np.array([[[4, 4, 0, 6, 6]], [[4, 4, 0, 6, 6]]]), truth)
    assert scores["voi"] == pytest.approx(0.0) and scores["true_objects"] == 2  # truth 0 is not scored
    with pytest.raises(ValueError):
        segmentation_scores(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int))
