"""The evaluation protocol every model is judged by: the trainer, ``lib.evaluate``, the model cards and
``benchmarks/quality.py`` all score through this module.

A recipe (``lib.configs.spec.Recipe``) splits its labelled data three ways: ``train`` teaches,
``select`` chooses the epoch (and by hand any threshold or post-processing step), ``test`` only
reports. ``cross`` holds labelled volumes of other microscopes, also report-only. Beside the sparse
metrics each row carries two dense facts:

- ``background_fp_fraction``: the share of voxels marked foreground in fully labelled in-plane tiles
  (``BACKGROUND_TILE`` wide) that hold no foreground at all (every mark there is a false positive;
  0 is right);
- ``predicted_fraction`` / ``labelled_fraction``: how much of the labelled voxels the model marks,
  against the label's own share;
- ``artifact_marked_fraction`` (axons): the share of voxels labelled as imaging artifacts that the model marks.

and each model's ``unlabelled`` checks give the foreground fraction it predicts on volumes without
labels, against a range its spec justifies.

Panels and tables of these evaluations: ``lib.figures``; the post-processing sweep's command line:
``python -m lib.sweep``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .configs.spec import DataSource, ForegroundCheck, StructureSpec
from .infers.postprocessing import postprocess, resolve, structure_mask
from .infers.predict import Predictor, model_grid_label, resize, sliding_window_probabilities, voxel_size_nm
from .metrics import detection_scores, instance_scores, roc_auc, segmentation_scores, skeleton_scores, voxel_scores
from .transforms.intensity import intensity_stats
from .transforms.io import read_volume
from .transforms.labels import map_labels

SPLITS = ("select", "test", "cross")
BACKGROUND_TILE = 32  # in-plane size of the empty tiles ``background_fp_fraction`` is counted on
# The figures each structure is judged by, in report tables (all on labelled voxels only).
HEADLINE_METRICS = {
    "axon": ("f1", "precision", "recall", "cl_dice", "predicted_fraction", "labelled_fraction",
             "artifact_marked_fraction"),
    "mitochondria": ("foreground_iou", "f1", "precision", "recall", "instance_f1", "ap", "background_fp_fraction"),
    "synapse": ("f1", "detection_precision", "detection_recall", "detection_f1", "true_objects",
                "predicted_objects", "background_fp_fraction"),
    "membrane": ("f1", "foreground_iou", "precision", "recall", "roc_auc"),
}  # fmt: skip
# What a post-processing sweep maximises on the select split (the figure each structure's goal is set in).
SWEEP_METRIC = {"mitochondria": "foreground_iou", "synapse": "detection_f1"}


def score(
    spec: StructureSpec,
    probabilities: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, ...],
) -> dict[str, Any]:
    """Voxel metrics, the structure's own metrics (all restricted to labelled voxels) and the dense facts."""
    metrics: dict[str, Any] = {
        **voxel_scores(prediction, target, mask),
        "roc_auc": roc_auc(probabilities, target, mask),
        **dense_facts(prediction, target, mask),
    }
    if "skeleton" in spec.structure_metrics:
        metrics.update(skeleton_scores(prediction, target, mask))
    if "instances" in spec.structure_metrics:
        if mask.all():
            instances = instance_scores(ndimage.label(prediction)[0], ndimage.label(target)[0])
            metrics.update(instances)
        else:
            metrics["instances_skipped"] = "instance metrics need a densely labelled region"
    if "detection" in spec.structure_metrics:
        metrics.update(detection_scores(prediction, target, spacing, mask))
    return metrics


def dense_facts(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Predicted vs labelled foreground share, and false positives on fully labelled empty slices."""
    pred, true = prediction.astype(bool), target.astype(bool)
    labelled = int(mask.sum())
    facts: dict[str, Any] = {
        "predicted_fraction": float((pred & mask).sum() / max(labelled, 1)),
        "labelled_fraction": float((true & mask).sum() / max(labelled, 1)),
    }
    # In-plane tiles of labelled slices that are fully labelled and hold no foreground: every mark there
    # is a false positive. Tiles rather than whole slices, since a dense EM slice rarely lacks the structure.
    marked = total = tiles = 0
    for z in range(mask.shape[0]):
        for y in range(0, mask.shape[1], BACKGROUND_TILE):
            for x in range(0, mask.shape[2], BACKGROUND_TILE):
                tile = (z, slice(y, y + BACKGROUND_TILE), slice(x, x + BACKGROUND_TILE))
                if mask[tile].all() and not true[tile].any():
                    tiles += 1
                    marked += int(pred[tile].sum())
                    total += pred[tile].size
    facts["background_tiles"] = tiles
    facts["background_fp_fraction"] = marked / total if total else float("nan")
    return facts


def artifact_facts(spec: StructureSpec, prediction: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Where the raw label marks imaging artifacts (TRAILMAP's 3: debris, bubbles, tissue edges), the share the
    model marks as the structure: every such mark is a false positive (0 is right). Empty without such labels."""
    value = spec.recipe.augmentation.artifact_label
    if value is None:
        return {}
    artifacts = label == value
    count = int(artifacts.sum())
    marked = float(prediction[artifacts].astype(bool).mean()) if count else float("nan")
    return {"artifact_voxels": count, "artifact_marked_fraction": marked}


def region_slices(region) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in region)


@dataclass
class Evaluation:
    """One labelled region scored: its report row and the arrays its panel shows."""

    row: dict[str, Any]
    raw: np.ndarray
    target: np.ndarray | None  # None for an unlabelled check
    mask: np.ndarray | None
    prediction: np.ndarray  # where the structure is predicted (the post-processing's structure mask)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """``(target, mask)`` of a labelled region (an unlabelled check has none: ValueError)."""
        if self.target is None or self.mask is None:
            raise ValueError(f"'{self.row.get('file', '')}' is an unlabelled check; it has no label to score against")
        return self.target, self.mask


def evaluate_region(
    spec: StructureSpec,
    network: torch.nn.Module,
    image: np.ndarray,
    label: np.ndarray,
    crop: tuple[slice, ...],
    *,
    voxel_size_nm: tuple[float, ...] | None = None,
    tta: int = 1,
    device: str = "cpu",
    method: str | None = None,
    options: dict[str, Any] | None = None,
    object_ids: np.ndarray | None = None,
    covered: np.ndarray | None = None,
) -> Evaluation:
    """Score ``network`` on ``crop`` of a whole labelled image: the crop is normalised by the whole
    image's statistics (as any datastore region is) and predicted at the model's voxel size.

    ``object_ids``: true object ids of the whole image (e.g. gala's ``labels/neurons``); the label the
    post-processing returns is then also scored as a segmentation of them (VOI split and merge, adapted
    Rand error: :func:`lib.metrics.segmentation_scores`), which suits instance outputs (``trace``).
    ``covered``: the voxels of the whole image the label covers (a source's ``mask``); None: all.
    """
    if image.shape != label.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    if object_ids is not None and object_ids.shape != image.shape:
        raise ValueError(f"object id shape {object_ids.shape} differs from image shape {image.shape}")
    raw = np.ascontiguousarray(image[crop])
    target, mask = map_labels(np.asarray(label[crop]), spec.label_map)
    if covered is not None:
        mask &= np.asarray(covered[crop]) > 0
    predictor = Predictor(network, spec, device, intensity_stats(image), voxel_size_nm)
    probabilities, ids = predictor.predict(raw, tta, method, **(options or {}))
    prediction = structure_mask(ids, method or spec.postprocessing)
    spacing_um = tuple(v / 1000.0 for v in voxel_size_nm) if voxel_size_nm else (1.0, 1.0, 1.0)
    metrics = score(spec, probabilities, prediction, target, mask, spacing_um)
    metrics.update(artifact_facts(spec, prediction, np.asarray(label[crop])))
    if object_ids is not None:
        metrics.update({f"segmentation_{k}": v for k, v in segmentation_scores(ids, object_ids[crop]).items()})
    row = {
        "shape": list(raw.shape),
        "voxel_size_nm": list(voxel_size_nm) if voxel_size_nm else None,
        "labelled_voxels": int(mask.sum()),
        "tta": tta,
        "metrics": metrics,
    }
    return Evaluation(row, raw, target, mask, prediction)


def evaluate_source(
    spec: StructureSpec,
    network: torch.nn.Module,
    data_dir: str,
    source: DataSource,
    split: str,
    *,
    tta: int = 1,
    device: str = "cpu",
) -> Evaluation:
    """Score one recipe source (a region of a shared-data file)."""
    path = os.path.join(data_dir, source.file)
    image = read_volume(path, source.raw)
    label = read_volume(path, source.label).array
    covered = None if source.mask is None else read_volume(path, source.mask).array
    result = evaluate_region(
        spec, network, image.array, label, region_slices(source.region),
        voxel_size_nm=voxel_size_nm(image, source.voxel_size_nm), tta=tta, device=device, covered=covered,
    )  # fmt: skip
    result.row.update(
        {"split": split, "file": source.file, "label": source.label, "region": region_text(source.region),
         "microscope": source.microscope}
    )  # fmt: skip
    return result


def foreground_check(
    spec: StructureSpec, network: torch.nn.Module, data_dir: str, check: ForegroundCheck, device: str = "cpu"
) -> Evaluation:
    """The share of an unlabelled volume's voxels the model marks, against the spec's plausible range."""
    path = os.path.join(data_dir, check.file)
    volume = read_volume(path, check.dataset)
    image = volume.array
    crop = np.ascontiguousarray(image[region_slices(check.region)])
    _, prediction = Predictor(network, spec, device, intensity_stats(image), voxel_size_nm(volume)).predict(crop)
    fraction = float(prediction.astype(bool).mean())
    low, high = check.plausible
    row = {
        "split": "unlabelled",
        "file": check.file,
        "region": region_text(check.region),
        "shape": list(crop.shape),
        "foreground_fraction": fraction,
        "plausible": [low, high],
        "plausible_because": check.why,
        "within": low <= fraction <= high,
    }
    return Evaluation(row, crop, None, None, prediction)


def pooled_scores(evaluations: list[Evaluation]) -> dict[str, float]:
    """Voxel scores over the labelled voxels of several evaluated regions together."""
    predicted, expected = [], []
    for e in evaluations:
        target, mask = e.labelled()
        predicted.append(e.prediction[mask])
        expected.append(target[mask])
    return voxel_scores(np.concatenate(predicted), np.concatenate(expected))


def run_protocol(
    spec: StructureSpec,
    network: torch.nn.Module,
    data_dir: str,
    *,
    splits: tuple[str, ...] = SPLITS,
    tta: int = 1,
    device: str = "cpu",
) -> tuple[dict[str, Any], list[Evaluation]]:
    """Every source of the chosen splits scored, pooled voxel scores per split, and the unlabelled checks.

    Returns the report (JSON-ready) and the evaluations (for panels).
    """
    evaluations = [
        evaluate_source(spec, network, data_dir, source, split, tta=tta, device=device)
        for split in splits
        for source in getattr(spec.recipe, split)
    ]
    pooled = {}
    for split in splits:
        parts = [e for e in evaluations if e.row["split"] == split]
        if parts:
            pooled[split] = pooled_scores(parts)
    checks = [foreground_check(spec, network, data_dir, c, device) for c in spec.recipe.unlabelled]
    report = {
        "model": spec.name,
        "tta": tta,
        "rows": [e.row for e in evaluations],
        "pooled": pooled,
        "unlabelled": [c.row for c in checks],
    }
    return report, evaluations + checks


def score_volumes(network: torch.nn.Module, volumes: list, spec: StructureSpec, device: str = "cpu") -> dict:
    """Pooled voxel scores of the post-processed prediction over already-normalised training volumes
    (``lib.trainers.data.TrainingVolume``): how the trainer picks its epoch on the ``select`` split."""
    preds, targets = [], []
    for volume in volumes:
        probabilities = sliding_window_probabilities(network, volume.image, spec, device)
        preds.append(postprocess(probabilities, spec)[volume.mask])
        targets.append(volume.target[volume.mask])
    return voxel_scores(np.concatenate(preds), np.concatenate(targets))


def region_text(region) -> str:
    """``"z0:z1,y0:y1,x0:x1"`` of a recipe region (None bounds left empty)."""
    return ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in region)


def parse_region(text: str | None) -> tuple[slice, ...]:
    """``"z0:z1,y0:y1,x0:x1"`` (any bound may be empty) → slices."""
    if not text:
        return (slice(None),) * 3
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"region needs three ranges z,y,x like 0:32,0:256,0:256, got {text!r}")
    return tuple(slice(*(int(v) if v else None for v in part.split(":"))) for part in parts)


def sweep(
    spec: StructureSpec,
    network: torch.nn.Module,
    data_dir: str,
    method: str,
    grid: dict[str, list[Any]],
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Score every combination of post-processing options in ``grid`` on the **select** split only (so
    the choice never sees a test region); probabilities are computed once per source. Rows sorted
    best first by the structure's ``SWEEP_METRIC`` (mean over the select sources), then voxel F1."""
    key = SWEEP_METRIC.get(spec.name, "f1")
    cached = []
    for source in spec.recipe.select:
        path = os.path.join(data_dir, source.file)
        volume = read_volume(path, source.raw)
        image = volume.array
        crop = region_slices(source.region)
        target, mask = map_labels(np.asarray(read_volume(path, source.label).array[crop]), spec.label_map)
        if source.mask is not None:
            mask &= read_volume(path, source.mask).array[crop] > 0
        voxel_size = voxel_size_nm(volume, source.voxel_size_nm)
        # Post-processed on the model's grid and scored on the image's, as ``Predictor.predict`` does.
        predictor = Predictor(network, spec, device, intensity_stats(image), voxel_size)
        probabilities = predictor.grid_probabilities(np.ascontiguousarray(image[crop]))
        spacing_um = tuple(v / 1000.0 for v in voxel_size) if voxel_size else (1.0, 1.0, 1.0)
        cached.append((probabilities, target, mask, spacing_um))
    rows = []
    for values in itertools.product(*grid.values()):
        chosen, options = resolve(spec, method, **dict(zip(grid, values)))
        scores = []
        for probabilities, target, mask, spacing_um in cached:
            prediction = structure_mask(postprocess(probabilities, spec, chosen, **options), chosen)
            if prediction.shape != target.shape:
                prediction = model_grid_label(prediction.astype(np.uint8), target.shape)
            on_image = probabilities if probabilities.shape == target.shape else resize(probabilities, target.shape)
            scores.append(score(spec, on_image, prediction, target, mask, spacing_um))
        mean = {m: float(np.mean([s[m] for s in scores])) for m in HEADLINE_METRICS.get(spec.name, ("f1",))}
        rows.append({"method": chosen, "options": options, **mean})
    return sorted(rows, key=lambda r: (-r[key], -r.get("f1", 0.0)))  # ties (few objects) broken by voxel F1
