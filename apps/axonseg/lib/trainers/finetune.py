"""Few-label fine-tuning of the served weights, and the gate that decides whether the result is served.

A lab brings its own microscope; its annotators correct a handful of regions. The recipe
(``StructureSpec.recipe.fine_tune``) starts from the served weights at a fraction of the recipe's
learning rate, trains for a number of iterations set by the labelled voxels, samples foreground
patches as often as the new labels hold foreground, and replays a share of patches from the recipe's
own training data so the original microscope is not forgotten. Regions are trained on the model's
voxel grid (``lib.trainers.data.load_region``).

The gate cannot fool itself: part of the new labels is held out before training (whole regions once
there are several, a slab of each region before that) and never trains; the weights are published
only if they score higher there than the served weights and stay within a stated tolerance of them
on the recipe's test split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..configs.spec import FineTune, StructureSpec
from ..networks import load_weights
from ..protocol import evaluate_source, pooled_scores, score_volumes
from .augmentation import recipe_augmentation
from .data import TrainingVolume, load_source
from .supervised import EpochStats, TrainingPlan, train_segmentation


class TooFewLabels(ValueError):
    """The labels cannot spare a held-out part yet: the client's to fix by labelling more."""


GATE_METRIC = "f1"  # voxel F1 (for one binary class, foreground IoU = F1 / (2 - F1): the same order)


def patch_voxels(spec: StructureSpec) -> int:
    return math.prod(spec.patch_size)


def iterations_for(labelled_voxels: int, spec: StructureSpec) -> int:
    """Training iterations for ``labelled_voxels`` (on the model's grid): so many per patch-worth."""
    recipe = spec.recipe.fine_tune
    wanted = recipe.iterations_per_patch * labelled_voxels / patch_voxels(spec)
    return int(np.clip(round(wanted), recipe.min_iterations, recipe.max_iterations))


def split_hold_out(
    volumes: list[TrainingVolume], recipe: FineTune
) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
    """``(train, held_out)``: every ``1 / hold_out_share``-th whole region (in the given order, the last of
    each group) once there are ``hold_out_regions_from``; before that, the last ``hold_out_share`` of each
    region along its longest axis is held out and the rest trains."""
    if len(volumes) >= recipe.hold_out_regions_from:
        every = max(2, round(1 / recipe.hold_out_share))
        held = {i for i in range(len(volumes)) if i % every == every - 1} or {len(volumes) - 1}
        return [v for i, v in enumerate(volumes) if i not in held], [v for i, v in enumerate(volumes) if i in held]
    train: list[TrainingVolume] = []
    held_out: list[TrainingVolume] = []
    for volume in volumes:
        axis = int(np.argmax(volume.image.shape))
        length = volume.image.shape[axis]
        cut = length - max(1, round(length * recipe.hold_out_share))
        if cut < 1:
            raise TooFewLabels(f"'{volume.name}' is too small to hold out a part of it")
        for part, window, name in ((train, slice(0, cut), "train"), (held_out, slice(cut, length), "held out")):
            index = tuple(window if a == axis else slice(None) for a in range(3))
            part.append(
                TrainingVolume(
                    f"{volume.name} [{name}: {'zyx'[axis]} {window.start}:{window.stop}]",
                    np.ascontiguousarray(volume.image[index]),
                    np.ascontiguousarray(volume.target[index]),
                    np.ascontiguousarray(volume.mask[index]),
                )
            )
    return train, held_out


def foreground_fraction_for(volumes: list[TrainingVolume]) -> float:
    """Share of patches centred on foreground, from the new labels' own foreground share: about four
    times it (Lucchi++'s 7 % gave the recipe's 0.3), within 0.1-0.5."""
    labelled = sum(v.labelled_voxels for v in volumes)
    foreground = sum(int((v.target[v.mask] > 0).sum()) for v in volumes)
    return float(np.clip(4 * foreground / max(labelled, 1), 0.1, 0.5))


def replay_volumes(spec: StructureSpec, data_dir: str | None) -> list[TrainingVolume]:
    """The recipe's training sources, each cut to its central ``replay_voxels`` along z (or [] when the
    recipe's data folder is not there: then nothing is replayed)."""
    if not data_dir or not all(os.path.exists(os.path.join(data_dir, s.file)) for s in spec.recipe.train):
        return []
    volumes = []
    for source in spec.recipe.train:
        volume = load_source(data_dir, source, spec)
        plane = math.prod(volume.image.shape[1:])
        depth = min(volume.image.shape[0], max(spec.patch_size[0], spec.recipe.fine_tune.replay_voxels // plane))
        start = (volume.image.shape[0] - depth) // 2
        # Keep the labelled slices of sparse labels (TRAILMAP) whole: cut only dense labels.
        if volume.mask.all():
            window = slice(start, start + depth)
            volume = TrainingVolume(
                f"{volume.name} z+{start}:{start + depth}",
                volume.image[window],
                volume.target[window],
                volume.mask[window],
            )
        volumes.append(volume)
    return volumes


def original_test_scores(
    spec: StructureSpec, network: torch.nn.Module, data_dir: str | None, device: str = "cpu"
) -> dict[str, float] | None:
    """Pooled voxel scores on the recipe's test split, or None when its files are not in ``data_dir``."""
    if not data_dir or not all(os.path.exists(os.path.join(data_dir, s.file)) for s in spec.recipe.test):
        return None
    return pooled_scores([evaluate_source(spec, network, data_dir, s, "test", device=device) for s in spec.recipe.test])


@dataclass
class GateDecision:
    """Both checks of a candidate against the served weights (voxel F1) and the verdict."""

    new_score: float  # candidate on the held-out new labels
    new_baseline: float  # served weights on the same voxels
    original_score: float | None  # candidate on the recipe's test split (None: its data is missing)
    original_baseline: float | None
    tolerance: float
    publish: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    new_score: float,
    new_baseline: float,
    original_score: float | None,
    original_baseline: float | None,
    tolerance: float,
) -> GateDecision:
    """Publish only if the held-out new-label score rises and the original test score stays within ``tolerance``."""
    args = (new_score, new_baseline, original_score, original_baseline, tolerance)
    if new_score <= new_baseline:
        return GateDecision(*args, False, f"held-out F1 {new_score:.3f} is not above the served {new_baseline:.3f}")
    if original_score is None or original_baseline is None:
        return GateDecision(*args, False, "the recipe's test split is not available to check (AXONSEG_REFERENCE_DATA)")
    if original_score < original_baseline - tolerance:
        return GateDecision(
            *args,
            False,
            f"original test F1 {original_score:.3f} fell more than {tolerance} below the served "
            f"{original_baseline:.3f}",
        )
    return GateDecision(
        *args,
        True,
        f"held-out F1 {new_baseline:.3f} -> {new_score:.3f}; original test F1 {original_baseline:.3f} -> "
        f"{original_score:.3f} (tolerance {tolerance})",
    )


@dataclass
class FineTuneRun:
    """What :func:`fine_tune` did and decided; the candidate weights are at the path it was given."""

    final: EpochStats
    gate: GateDecision
    iterations: int
    trained_voxels: int
    held_out: list[str]


def fine_tune(
    spec: StructureSpec,
    volumes: list[TrainingVolume],
    served_path: str,
    candidate_path: str,
    *,
    original_baseline: Callable[[], float | None],
    data_dir: str | None,
    iterations: int | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    replay_share: float | None = None,
    replay: list[TrainingVolume] | None = None,
    pretrained_encoder: str | None = None,
    freeze_encoder_epochs: int = 0,
    seed: int = 0,
    device: str = "cpu",
    meta: dict | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FineTuneRun:
    """Fine-tune the weights at ``served_path`` on labelled ``volumes`` (model grid) and gate the result.

    Part of ``volumes`` is held out first (:func:`split_hold_out`); the best epoch on it is kept at
    ``candidate_path``. ``original_baseline``: returns the served weights' F1 on the recipe's test split
    (the caller keeps it per version; None when unknown), asked only when the held-out part improved.
    Options left None come from the structure's fine-tuning recipe; ``replay`` None loads it from
    ``data_dir``.

    Raises:
        TooFewLabels: too few labelled voxels to hold a part out.
    """
    recipe = spec.recipe.fine_tune
    _require_enough_labels(spec, volumes)
    train, held_out = split_hold_out(volumes, recipe)
    served, _ = load_weights(served_path, device)
    baseline = score_volumes(served, held_out, spec, device)[GATE_METRIC]
    share = recipe.replay_share if replay_share is None else replay_share
    if replay is None:
        replay = replay_volumes(spec, data_dir) if share > 0 else []
    trained_voxels = sum(v.labelled_voxels for v in train)
    iterations = iterations or iterations_for(trained_voxels, spec)
    epochs = epochs or recipe.validations
    plan = TrainingPlan(
        epochs=epochs,
        iterations_per_epoch=max(1, math.ceil(iterations / epochs)),
        batch_size=batch_size or spec.recipe.batch_size,
        learning_rate=learning_rate or spec.recipe.learning_rate * recipe.learning_rate_factor,
        foreground_fraction=foreground_fraction_for(train),
        seed=seed,
        # A pretrained encoder starts a fresh network: fine-tuning the served one would mix the two.
        init_weights=None if pretrained_encoder else served_path,
        pretrained_encoder=pretrained_encoder,
        freeze_encoder_epochs=freeze_encoder_epochs,
        transforms=recipe_augmentation(spec, data_dir)[0],  # the structure's own, reference data and all
        replay=replay,
        replay_share=share,
        keep_norm_statistics=not pretrained_encoder,
        device=device,
        meta={**(meta or {}), "recipe": "fine-tune", "held_out": [v.name for v in held_out]},
    )
    final = train_segmentation(spec, train, held_out, candidate_path, plan, on_epoch=on_epoch, should_stop=should_stop)
    gate = _gate(spec, final, baseline, candidate_path, data_dir, device, original_baseline)
    return FineTuneRun(final, gate, iterations, trained_voxels, [v.name for v in held_out])


def _require_enough_labels(spec: StructureSpec, volumes: list[TrainingVolume]) -> None:
    minimum = spec.recipe.fine_tune.min_labelled_voxels
    labelled = sum(v.labelled_voxels for v in volumes)
    if labelled < minimum:
        raise TooFewLabels(
            f"{labelled:,} labelled {spec.name} voxels (on the model's grid) are too few to hold a part out for "
            f"validation; label at least {minimum:,}"
        )


def _gate(
    spec: StructureSpec,
    final: EpochStats,
    baseline: float,
    candidate_path: str,
    data_dir: str | None,
    device: str,
    original_baseline: Callable[[], float | None],
) -> GateDecision:
    """The candidate against the served weights; the recipe's test split is scored only when the held-out
    part improved (otherwise the gate has its answer: spare the test split's minutes)."""
    scores, served_original = None, None
    if final.best_metric > baseline:
        candidate, _ = load_weights(candidate_path, device)
        scores = original_test_scores(spec, candidate, data_dir, device)
        served_original = original_baseline()
    return decide(
        final.best_metric,
        baseline,
        scores[GATE_METRIC] if scores else None,
        served_original,
        spec.recipe.fine_tune.original_tolerance,
    )
