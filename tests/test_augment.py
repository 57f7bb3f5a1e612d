"""Microscopy augmentations: each does what it claims and keeps image, target and mask aligned."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.augment import (
    HistogramMatchd,
    RandArtifactCutMixd,
    RandLocalContrastd,
    RandMisalignmentd,
    RandMissingSectiond,
)


def patch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.random((6, 32, 32)).astype(np.float32)
    target = (image > 0.7).astype(np.uint8)  # labels drawn from the image: alignment is checkable
    return {"image": image, "target": target, "mask": np.ones(image.shape, bool)}


def test_missing_section_blanks_one_image_slice_only():
    data = patch()
    out = RandMissingSectiond(prob=1.0).set_random_state(3)(data)
    changed = [z for z in range(6) if not np.array_equal(out["image"][z], data["image"][z])]
    assert len(changed) == 1 and np.allclose(out["image"][changed[0]], data["image"].mean())
    assert np.array_equal(out["target"], data["target"])
    assert RandMissingSectiond(prob=0.0)(data)["image"] is data["image"]


def test_misalignment_shifts_image_and_labels_together_and_masks_the_gap():
    data = patch()
    transform = RandMisalignmentd(prob=1.0, max_shift=4).set_random_state(1)
    out = transform(data)
    z, (dy, dx) = transform.array.z, transform.array.shift
    assert (dy, dx) != (0, 0) and 1 <= z < 6
    assert np.array_equal(out["image"][:z], data["image"][:z])  # slices before z untouched
    # where the mask is still set, labels still match the (shifted) image exactly
    labelled = out["mask"]
    assert np.array_equal(out["target"][labelled], (out["image"][labelled] > 0.7).astype(np.uint8))
    assert not labelled[z:].all()  # shifted-in border is unlabelled


def test_histogram_match_takes_the_reference_distribution():
    data = patch()
    reference = np.random.default_rng(1).normal(5.0, 0.5, (4, 16, 16)).astype(np.float32)
    out = HistogramMatchd(reference)(data)
    assert np.quantile(out["image"], [0.1, 0.5, 0.9]) == pytest.approx(np.quantile(reference, [0.1, 0.5, 0.9]), abs=0.1)
    assert np.array_equal(out["target"], data["target"])


def test_artifact_cutmix_pastes_labelled_background():
    data = patch()
    artifact = np.full((3, 8, 8), 9.0, np.float32)
    out = RandArtifactCutMixd([artifact], prob=1.0).set_random_state(0)(data)
    pasted = out["image"] == 9.0
    assert pasted.sum() == artifact.size
    assert not out["target"][pasted].any() and out["mask"][pasted].all()
    assert np.array_equal(out["image"][~pasted], data["image"][~pasted])
    with pytest.raises(ValueError, match="artifact"):
        RandArtifactCutMixd([])


def test_local_contrast_spreads_a_low_contrast_image():
    data = patch()
    data["image"] = 0.45 + 0.1 * data["image"]  # all intensities within [0.45, 0.55]
    out = RandLocalContrastd(prob=1.0)(data)
    assert out["image"].std() > 2 * data["image"].std()
    assert np.array_equal(out["target"], data["target"])
