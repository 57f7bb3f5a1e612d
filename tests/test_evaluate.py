"""The evaluate command on real held-out data: a metrics JSON with the structure's metrics and a PNG panel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import APP_DIR, shared_file

from lib.protocol import parse_region


def run_evaluate(tmp_path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "lib.evaluate", *args, "--out", str(tmp_path)],
        capture_output=True, text=True, env={"PYTHONPATH": str(APP_DIR), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_synapse_evaluation_reports_voxel_and_detection_metrics(tmp_path):
    """Also a regression test: the crop is 128 voxels high, less than the 160-voxel window; zero padding
    made this prediction empty (F1 0.0)."""
    data = shared_file("drosophila_vnc_stack1_xlt512.h5")
    run_evaluate(tmp_path, "synapse", str(data), "--dataset", "raw", "--label-dataset", "labels/synapse",
                 "--region", "0:8,768:896,0:256")  # fmt: skip
    report = json.loads((tmp_path / "synapse.json").read_text())
    m = report["metrics"]
    assert report["shape"] == [8, 128, 256] and report["labelled_voxels"] == 8 * 128 * 256
    for key in ("precision", "recall", "f1", "dice", "foreground_iou", "roc_auc", "detection_f1", "cremi_distance"):
        assert key in m
    assert m["roc_auc"] > 0.9 and m["f1"] > 0.4  # held-out region (the model card's validation slab)
    assert (tmp_path / "synapse.png").stat().st_size > 10_000


def test_axon_evaluation_ignores_unlabelled_voxels_and_reports_skeleton_metrics(tmp_path):
    data = shared_file("trailmap_cubes_training.h5")
    run_evaluate(tmp_path, "axon", str(data), "--dataset", "raw", "--label-dataset", "labels/sparse",
                 "--region", "576:640,0:64,0:64", "--tta", "8")  # fmt: skip
    report = json.loads((tmp_path / "axon_tta8.json").read_text())
    assert 0 < report["labelled_voxels"] < 64**3  # TRAILMAP's 0 = unlabelled is left out
    assert report["tta"] == 8
    assert {"skeleton_precision", "skeleton_recall", "cl_dice"} <= set(report["metrics"])
    assert report["metrics"]["f1"] > 0.6


def test_membrane_trace_evaluation_reports_segmentation_metrics_against_object_ids(tmp_path):
    """gala FIB-SEM (another microscope than the ssTEM the model learnt): the traced neurites scored against
    the true neuron ids, beside the membrane's voxel metrics computed on the trace's membrane (its 0s)."""
    data = shared_file("gala_fibsem_train.h5")
    run_evaluate(tmp_path, "membrane", str(data), "--dataset", "raw", "--label-dataset", "labels/boundary",
                 "--object-ids", "labels/neurons", "--voxel-size", "10", "10", "10", "--postprocessing", "trace",
                 "--region", "0:50,0:100,100:200")  # fmt: skip
    report = json.loads((tmp_path / "membrane_trace.json").read_text())
    m = report["metrics"]
    assert report["postprocessing"]["method"] == "trace" and report["object_ids"] == "labels/neurons"
    for key in ("voi_split", "voi_merge", "voi", "adapted_rand_error", "true_objects", "predicted_objects"):
        assert f"segmentation_{key}" in m
    assert m["segmentation_true_objects"] > 30 and m["segmentation_predicted_objects"] > 10
    assert m["segmentation_voi"] < 4.0 and m["recall"] > 0.3  # membranes marked, neurites not one blob
    assert (tmp_path / "membrane_trace.png").stat().st_size > 10_000


def test_region_parsing_and_errors():
    assert parse_region("1:3,:,4:") == (slice(1, 3), slice(None), slice(4, None))
    with pytest.raises(ValueError, match="three ranges"):
        parse_region("0:4,0:4")
