"""A recipe's training augmentations as one MONAI ``Compose`` over ``{"image", "target", "mask"}`` patches.

Order follows the imaging: acquisition effects first, on the raw ``(z, y, x)`` patch (artifact cutmix,
local contrast, EM section defects, histogram matching), then geometry (flips, rot90, warps) on
channel-first arrays, then intensity. Labels move with the image: ``target`` and ``mask`` use
nearest-neighbour resampling, and voxels a warp pulls in from outside the patch get mask 0, so the
loss never sees invented labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandHistogramShiftd,
    RandLambdad,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from ..configs.spec import StructureSpec
from ..transforms.augment import (
    PATCH_KEYS,
    HistogramMatch,
    RandArtifactCutMixd,
    RandInPlaneBlurd,
    RandInPlaneLowResolutiond,
    RandInvertd,
    RandLocalContrastd,
    RandMisalignmentd,
    RandMissingSectiond,
)
from ..transforms.intensity import normalize_percentiles
from ..transforms.io import read_volume
from .data import read_source

# Resampling per key: the image interpolates; labels and mask stay binary, and outside the patch
# the mask is 0 (unlabelled) while the image reflects.
_MODES = ("bilinear", "nearest", "nearest")
_PADDING = ("reflection", "zeros", "zeros")


def training_transforms(
    spec: StructureSpec,
    histogram_reference: np.ndarray | None = None,
    artifacts: Sequence[np.ndarray] = (),
) -> Compose:
    """The augmentation pipeline of ``spec.recipe.augmentation`` for float32 ``(z, y, x)`` patches.

    Args:
        histogram_reference: normalised voxels of the reference volume (D-LMBmap histogram matching);
            skipped when None, e.g. when retraining on a server that has no reference data.
        artifacts: normalised artifact cubes to paste as labelled background (D-LMBmap cutmix).
    Returns:
        a ``Compose``; call ``set_random_state`` on it for reproducible draws. Outputs are channel-first.
    """
    aug = spec.recipe.augmentation
    keys = PATCH_KEYS
    steps: list = []
    if artifacts:
        steps.append(RandArtifactCutMixd(artifacts, prob=0.2))
    if aug.local_contrast:
        steps.append(RandLocalContrastd(prob=0.2))
    if aug.section_defects:
        steps += [RandMissingSectiond(prob=0.1), RandMisalignmentd(prob=0.1, max_shift=8)]
    if aug.domain_randomisation:
        steps += [
            RandInPlaneBlurd(prob=0.2),
            RandInPlaneLowResolutiond(prob=0.2),
            RandInvertd(prob=0.2, ceiling=spec.intensity_ceiling),
        ]
    if histogram_reference is not None:  # last of the numpy steps: RandLambdad hands on a tensor
        steps.append(RandLambdad("image", HistogramMatch(histogram_reference), prob=0.2))
    steps.append(EnsureChannelFirstd(keys, channel_dim="no_channel"))
    # Flips: y and x always; z only where sections are as fine as the pixels.
    steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in ([1, 2] if spec.anisotropic else [0, 1, 2])]
    if spec.patch_size[1] == spec.patch_size[2]:
        steps.append(RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(1, 2)))
    if aug.deform and spec.anisotropic:
        # In-plane only: rotating or scaling across 50 nm sections would blur them together.
        steps.append(
            RandAffined(
                keys,
                prob=aug.deform,
                rotate_range=(math.pi, 0.0, 0.0),  # about z
                scale_range=(0.0, 0.15, 0.15),
                mode=_MODES,
                padding_mode=_PADDING,
            )
        )
    elif aug.deform:
        steps.append(
            Rand3DElasticd(
                keys,
                sigma_range=(5, 8),
                magnitude_range=(100, 250),
                prob=aug.deform,
                mode=_MODES,
                padding_mode=_PADDING,
            )
        )
    if aug.intensity:
        steps += [
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            RandScaleIntensityd("image", factors=0.15, prob=0.3),
            RandShiftIntensityd("image", offsets=0.1, prob=0.3),
            RandGaussianNoised("image", prob=0.2, std=0.03),
        ]
    if aug.domain_randomisation:
        # A non-linear remapping of the histogram, and gamma well beyond the intensity step's.
        steps += [
            RandHistogramShiftd("image", num_control_points=(5, 10), prob=0.2),
            RandAdjustContrastd("image", prob=0.2, gamma=(0.4, 2.5)),
        ]
    return Compose(steps)


def describe(transforms: Compose, spec: StructureSpec, artifacts: Sequence[np.ndarray]) -> list[str]:
    """The pipeline's steps as a person reads them (model cards, training logs)."""
    aug = spec.recipe.augmentation
    names = []
    for step in transforms.transforms:
        name = type(step).__name__
        if name == "EnsureChannelFirstd":
            continue
        if name == "RandLambdad":
            name = f"HistogramMatch to {aug.histogram_reference} (p 0.2)"
        elif name == "RandArtifactCutMixd":
            name = f"RandArtifactCutMixd ({len(artifacts)} cubes of label {aug.artifact_label})"
        names.append(name)
    if aug.artifact_label is not None and not artifacts:
        names.append(
            f"(artifact cutmix is configured, but the training regions hold no label-{aug.artifact_label} voxels)"
        )
    return names


def load_histogram_reference(
    data_dir: str, spec: StructureSpec, voxels: int = 1 << 18, seed: int = 0
) -> np.ndarray | None:
    """A random sample of the reference volume's normalised voxels (enough for its histogram)."""
    name = spec.recipe.augmentation.histogram_reference
    if name is None:
        return None
    raw = read_volume(os.path.join(data_dir, name), "raw").array
    values = normalize_percentiles(raw, spec.percentiles, spec.intensity_ceiling).ravel()
    return np.random.default_rng(seed).choice(values, size=min(voxels, values.size), replace=False)


def load_artifact_cubes(data_dir: str, spec: StructureSpec, size: int = 12, limit: int = 64) -> list[np.ndarray]:
    """Cubes of normalised image centred on voxels labelled ``artifact_label`` in the training regions,
    keeping only cubes with no labelled foreground (so pasting them as background is true)."""
    label_value = spec.recipe.augmentation.artifact_label
    if label_value is None:
        return []
    cubes: list[np.ndarray] = []
    rng = np.random.default_rng(spec.recipe.seed)
    for source in spec.recipe.train:
        image, label, _ = read_source(data_dir, source, spec)
        foreground = np.isin(label, [v for v, cls in spec.label_map.items() if cls])
        centres = np.argwhere(label == label_value)
        for centre in centres[rng.permutation(len(centres))][: limit // len(spec.recipe.train) + 1]:
            corner = [int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, image.shape)]
            region = tuple(slice(c, c + size) for c in corner)
            if not foreground[region].any():
                cubes.append(image[region].copy())
    return cubes[:limit]


def recipe_augmentation(spec: StructureSpec, data_dir: str | None) -> tuple[Compose, list[np.ndarray]]:
    """The recipe's whole augmentation pipeline and its artifact cubes, with the reference data read from
    ``data_dir``; without it (None or missing files), the pipeline without the steps that need it."""
    augmentation = spec.recipe.augmentation
    needed = [augmentation.histogram_reference] if augmentation.histogram_reference else []
    if augmentation.artifact_label is not None:
        needed += [source.file for source in spec.recipe.train]
    if needed and (not data_dir or not all(os.path.exists(os.path.join(data_dir, f)) for f in needed)):
        return training_transforms(spec), []
    artifacts = load_artifact_cubes(data_dir, spec) if data_dir else []
    reference = load_histogram_reference(data_dir, spec) if data_dir else None
    return training_transforms(spec, reference, artifacts), artifacts
