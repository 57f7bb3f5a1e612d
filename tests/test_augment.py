"""Microscopy augmentations: each does what it claims and keeps image, target and mask aligned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from lib.configs.registry import SPECS
from lib.configs.spec import DataSource
from lib.trainers.augmentation import load_artifact_cubes, training_transforms
from lib.transforms.augment import (
    PATCH_KEYS,
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


# --- the recipes' composed pipelines (lib.trainers.augmentation) -------------------------------------
def _recipe_spec(name: str, **augmentation):
    spec = SPECS[name]
    aug = dataclasses.replace(spec.recipe.augmentation, **augmentation)
    return dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, augmentation=aug))


def _blobs(shape, seed: int = 0) -> dict:
    """A binary blob image whose label is the image itself, so alignment can be read off."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 3)
    image = (smooth > np.quantile(smooth, 0.8)).astype(np.float32)
    return {"image": image, "target": image.copy(), "mask": np.ones(shape, np.float32)}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_recipe_geometry_moves_labels_with_the_image(name):
    spec = _recipe_spec(name, intensity=False, deform=1.0, section_defects=False, local_contrast=False)
    transforms = training_transforms(spec).set_random_state(0)
    data = _blobs(spec.patch_size)
    moved, masked = 0, 0
    for _ in range(8):
        out = {k: np.asarray(v) for k, v in transforms(dict(data)).items()}
        assert all(v.shape == (1, *spec.patch_size) for v in out.values())
        labelled = out["mask"][0] > 0.5
        agree = ((out["image"][0] > 0.5) == (out["target"][0] > 0.5))[labelled]
        assert agree.mean() > 0.98  # bilinear image vs nearest label differ only on blob borders
        moved += ((out["target"][0] > 0.5) != data["target"]).mean() > 0.05
        masked += not labelled.all()  # voxels warped in from outside are unlabelled
    assert moved >= 4 and masked >= 1


def test_sstem_warps_stay_within_sections_and_fibsem_warps_do_not():
    depth = 8
    for name, mixes in (("membrane", False), ("mitochondria", True)):
        spec = _recipe_spec(name, intensity=False, deform=1.0, section_defects=False)
        shape = (depth, *spec.patch_size[1:])
        planes = np.broadcast_to(np.arange(1, depth + 1, dtype=np.float32)[:, None, None], shape).copy()
        data = {"image": planes, "target": np.zeros(shape, np.float32), "mask": np.ones(shape, np.float32)}
        transforms = training_transforms(spec).set_random_state(1)
        outs = [np.asarray(transforms(dict(data))["image"])[0] for _ in range(6)]
        within = all(np.allclose(out, np.round(out.mean(axis=(1, 2)))[:, None, None]) for out in outs)
        assert within != mixes, name


def test_recipe_augmentation_is_reproducible_and_includes_the_structure_steps():
    spec = SPECS["axon"]
    reference = np.random.default_rng(0).random(4096).astype(np.float32)
    names = [type(t).__name__ for t in training_transforms(spec, reference, [np.zeros((4, 4, 4))]).transforms]
    assert {"RandArtifactCutMixd", "RandLocalContrastd", "RandLambdad", "Rand3DElasticd"} <= set(names)
    assert "RandMisalignmentd" in [type(t).__name__ for t in training_transforms(SPECS["synapse"]).transforms]
    data = _blobs(spec.patch_size)
    first, second = (training_transforms(spec, reference).set_random_state(5) for _ in range(2))
    for _ in range(4):
        a, b = first(dict(data)), second(dict(data))
        assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in PATCH_KEYS)


def test_artifact_cubes_come_from_artifact_voxels_away_from_foreground(tmp_path):
    import h5py

    raw = np.zeros((32, 32, 32), np.uint16)
    label = np.ones(raw.shape, np.uint8)  # TRAILMAP: 1 background
    raw[4:8, 4:8, 4:8], label[4:8, 4:8, 4:8] = 1000, 3  # an artifact far from axons
    raw[24:28, 24:28, 24:28], label[24:28, 24:28, 24:28] = 1000, 3  # an artifact touching an axon
    label[20:30, 26, 26] = 2
    with h5py.File(tmp_path / "cubes.h5", "w") as f:
        f["raw"], f["labels/sparse"] = raw, label
    spec = SPECS["axon"]
    spec = dataclasses.replace(
        spec, recipe=dataclasses.replace(spec.recipe, train=(DataSource("cubes.h5", "labels/sparse"),))
    )
    cubes = load_artifact_cubes(str(tmp_path), spec, size=8)
    assert cubes and all(c.shape == (8, 8, 8) and c.max() == spec.intensity_ceiling for c in cubes)  # bright, clipped
    assert load_artifact_cubes(str(tmp_path), SPECS["mitochondria"]) == []  # no artifact label in its recipe
