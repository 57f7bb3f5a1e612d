"""Post-processing methods on small volumes whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from lib.configs.registry import SPECS
from lib.errors import InvalidRequest
from lib.infers.postprocessing import (
    bilateral,
    default_options,
    hysteresis,
    objects,
    postprocess,
    threshold,
    watershed,
)


def test_threshold_drops_small_components():
    p = np.zeros((1, 5, 10), np.float32)
    p[0, 1:4, 1:4] = 0.9  # 9 voxels
    p[0, 2, 7] = 0.9  # 1 voxel
    assert threshold(p, 0.5, min_size=2).sum() == 9


def test_object_rules_drop_small_faint_and_single_section_objects():
    p = np.zeros((4, 12, 40), np.float32)
    p[0:3, 1:5, 1:5] = 0.95  # 48 voxels over 3 sections, confident: a synapse
    p[0:3, 1:5, 10:14] = 0.6  # as big, never confident: dropped by min_peak
    p[1, 1:8, 20:27] = 0.95  # 49 voxels in one section: dropped by min_sections
    p[0:2, 8:10, 30:32] = 0.95  # 8 voxels: dropped by min_size
    kept = objects(p, threshold=0.5, min_size=20, min_peak=0.9, min_sections=2)
    assert kept.sum() == 48 and kept[0:3, 1:5, 1:5].all()
    assert objects(p, threshold=0.5).sum() == 2 * 48 + 49 + 8  # defaults: every object above 0.5 kept
    assert postprocess(p, SPECS["synapse"], "objects", min_peak=0.9, min_sections=2, min_size=20).sum() == 48


def test_hysteresis_keeps_only_components_with_a_seed():
    p = np.zeros((1, 3, 12), np.float32)
    p[0, 1, 0:5] = 0.3
    p[0, 1, 2] = 0.99  # seed: the whole 0.3 run grows from it
    p[0, 1, 7:11] = 0.5  # above low, no seed: dropped
    out = hysteresis(p, high=0.98, low=0.2, min_size=1)
    assert out[0, 1].tolist() == [1] * 5 + [0] * 7
    assert hysteresis(p, high=0.98, low=0.2, min_size=6).sum() == 0  # the size filter applies after
    with pytest.raises(ValueError, match="low < high"):
        hysteresis(p, high=0.2, low=0.5)


def test_skeleton_output_is_the_centre_line_of_a_tube():
    p = np.zeros((9, 9, 40), np.float32)
    p[2:7, 2:7, 3:37] = 0.99  # a 5x5 tube along x
    line = threshold(p, 0.5, skeleton=True)
    assert line.dtype == np.uint8 and 0 < line.sum() <= 40  # one voxel thick
    zs, ys, xs = np.nonzero(line)
    assert set(zs) == {4} and set(ys) == {4} and xs.max() - xs.min() >= 25  # on the axis, most of its length
    assert hysteresis(p, min_size=1, skeleton=True).sum() == line.sum()
    assert postprocess(p, SPECS["axon"], skeleton="true").sum() == line.sum()  # an infer option


def test_watershed_splits_touching_objects():
    zz, yy, xx = np.mgrid[:16, :16, :32]
    balls = ((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 9) ** 2 <= 36) | (
        (zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 20) ** 2 <= 36
    )
    p = balls.astype(np.float32)
    instances = watershed(p, threshold=0.5, min_size=10, min_distance=4, instances=True)
    assert len(np.unique(instances)) - 1 == 2  # two objects, although they touch
    assert np.array_equal(watershed(p, 0.5, 10, 4) > 0, instances > 0)
    assert instances[8, 8, 9] != instances[8, 8, 20]


def test_bilateral_opening_removes_specks_but_keeps_a_thick_membrane():
    p = np.zeros((1, 20, 20), np.float32)
    p[0, :, 8:13] = 0.95  # a membrane 5 pixels wide
    p[0, 3, 3] = 0.95  # a speck
    out = bilateral(p, threshold=0.5, radius=1)
    assert out[0, 3, 3] == 0 and out[0, 10, 10] == 1


def test_spec_defaults_and_request_overrides():
    spec = SPECS["mitochondria"]
    assert default_options(spec)["min_size"] == spec.min_size
    p = np.zeros((1, 4, 4), np.float32)
    p[0, 1:3, 1:3] = 0.9
    assert postprocess(p, spec, "threshold", threshold="0.5", min_size="1").sum() == 4
    # the client's mistakes: a 400 wherever they are parsed (bounds of each option: test_param_bounds.py)
    with pytest.raises(InvalidRequest, match=r"threshold must be a number in \[0, 1\]"):
        postprocess(p, spec, "threshold", threshold="high")
    with pytest.raises(InvalidRequest, match="takes"):
        postprocess(p, spec, "threshold", high=0.9)
    with pytest.raises(InvalidRequest, match="unknown post-processing"):
        postprocess(p, spec, "magic")
