"""Voxel metrics against counts worked out by hand."""

import numpy as np
import pytest

from lib.metrics import voxel_scores


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
