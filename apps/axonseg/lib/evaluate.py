"""Evaluate a model on a labelled volume: a metrics JSON and a PNG panel (raw, label, prediction).

    PYTHONPATH=apps/axonseg python -m lib.evaluate mitochondria ../shared/data/lucchi_pp_train.h5 \\
        --dataset raw --label-dataset labels/mito --region 133:165,0:512,0:512 --tta 8 --out eval/

The image and label may be any supported format (TIFF, HDF5, Zarr, N5, NRRD, NIfTI). Raw label
values are mapped with the model's ``label_map`` (e.g. TRAILMAP 2 = axon, 1/3/4 = background,
0 = unlabelled and ignored by every metric).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
from scipy import ndimage

from .configs.registry import MODEL_DIR, SPECS
from .configs.spec import StructureSpec
from .infers.postprocessing import postprocess, resolve
from .infers.predict import TTA_VARIANTS, predict_probabilities
from .machine import default_device, describe_machine
from .metrics import detection_scores, instance_scores, roc_auc, skeleton_scores, voxel_scores
from .networks import load_weights
from .transforms.intensity import intensity_stats
from .transforms.io import read_volume
from .transforms.labels import map_labels


def parse_region(text: str | None) -> tuple[slice, ...]:
    """``"z0:z1,y0:y1,x0:x1"`` (any bound may be empty) → slices."""
    if not text:
        return (slice(None),) * 3
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"region needs three ranges z,y,x like 0:32,0:256,0:256, got {text!r}")
    return tuple(slice(*(int(v) if v else None for v in part.split(":"))) for part in parts)


def score(
    spec: StructureSpec,
    probabilities: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, ...],
) -> dict[str, Any]:
    """Voxel metrics (always) and the structure's own metrics, all restricted to labelled voxels."""
    metrics: dict[str, Any] = {
        **voxel_scores(prediction, target, mask),
        "roc_auc": roc_auc(probabilities, target, mask),
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


def evaluate(
    model: str,
    image_path: str,
    label_path: str,
    *,
    dataset: str | None = None,
    label_dataset: str | None = None,
    region: str | None = None,
    weights: str | None = None,
    tta: int = 1,
    device: str | None = None,
    postprocessing: str | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns the report and the arrays the panel shows (raw, target, mask, prediction)."""
    spec = SPECS[model]
    crop = parse_region(region)
    image = read_volume(image_path, dataset)
    label = read_volume(label_path, label_dataset)
    if image.shape != label.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    raw = np.ascontiguousarray(image.array[crop])
    target, mask = map_labels(label.array[crop], spec.label_map)
    method, effective = resolve(spec, postprocessing, **(options or {}))  # bad options fail before inference
    device = device or default_device()
    weights = weights or os.path.join(MODEL_DIR, f"{model}.pt")
    network, meta = load_weights(weights, device)
    started = time.perf_counter()
    # The crop is normalised by the whole volume's statistics, as training and serving normalise any region.
    probabilities = predict_probabilities(network, raw, spec, device, tta, stats=intensity_stats(image.array))
    prediction = postprocess(probabilities, spec, method, **effective)
    seconds = time.perf_counter() - started
    report = {
        "model": model,
        "weights": os.path.abspath(weights),
        "weights_epoch": meta.get("epoch"),
        "image": os.path.abspath(image_path),
        "dataset": dataset,
        "label": os.path.abspath(label_path),
        "label_dataset": label_dataset,
        "region": region,
        "shape": list(raw.shape),
        "spacing_um": list(image.spacing),
        "labelled_voxels": int(mask.sum()),
        "tta": tta,
        "postprocessing": {"method": method, **effective},
        "seconds": round(seconds, 2),
        "seconds_per_mvox": round(seconds / (raw.size / 1e6), 3),
        "device": device,
        "machine": describe_machine(),
        "metrics": score(spec, probabilities, prediction, target, mask, image.spacing),
    }
    return report, {"raw": raw, "target": target, "mask": mask, "prediction": prediction}


def plot_panel(path: str, arrays: dict[str, np.ndarray], title: str, slices: int = 4) -> None:
    """Rows raw / label / prediction over ``slices`` evenly spaced z-slices; unlabelled voxels grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = arrays["raw"].shape[0]
    zs = sorted({int(z) for z in np.linspace(0, depth - 1, min(slices, depth) + 2)[1:-1]}) or [0]
    height, width = arrays["raw"].shape[1:]
    aspect = height / width
    fig, axes = plt.subplots(3, len(zs), figsize=(3 * len(zs), 9 * aspect + 0.8), squeeze=False)
    for col, z in enumerate(zs):
        raw = arrays["raw"][z]
        label = np.where(arrays["mask"][z], arrays["target"][z].astype(float), 0.5)
        rows = [(raw, "gray", f"raw z={z}"), (label, "magma", "label (grey: unlabelled)")]
        rows.append((arrays["prediction"][z], "magma", "prediction"))
        for row, (image, cmap, name) in enumerate(rows):
            axes[row][col].imshow(image, cmap=cmap, vmin=None if row == 0 else 0, vmax=None if row == 0 else 1)
            axes[row][col].set_title(name, fontsize=9)
            axes[row][col].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("image")
    parser.add_argument("--label", help="label volume (default: the image file, with --label-dataset)")
    parser.add_argument("--dataset", help="dataset of the image inside HDF5/Zarr/N5")
    parser.add_argument("--label-dataset", help="dataset of the label inside HDF5/Zarr/N5")
    parser.add_argument("--region", help="z0:z1,y0:y1,x0:x1 crop to evaluate on")
    parser.add_argument("--weights", help="weights file (default: the shipped model)")
    parser.add_argument("--tta", type=int, default=1, choices=TTA_VARIANTS)
    parser.add_argument("--device")
    parser.add_argument("--postprocessing", help="method (default: the model's): threshold, hysteresis, ...")
    parser.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="post-processing option, e.g. --option high 0.98")  # fmt: skip
    parser.add_argument("--out", default="evaluation", help="folder for <model>.json and <model>.png")
    args = parser.parse_args(argv)
    report, arrays = evaluate(
        args.model,
        args.image,
        args.label or args.image,
        dataset=args.dataset,
        label_dataset=args.label_dataset,
        region=args.region,
        weights=args.weights,
        tta=args.tta,
        device=args.device,
        postprocessing=args.postprocessing,
        options=dict(args.option),
    )
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.model}" + (f"_tta{args.tta}" if args.tta > 1 else ""))
    if args.postprocessing:
        stem += f"_{args.postprocessing}"
    with open(f"{stem}.json", "w") as f:
        json.dump(report, f, indent=2)
    m = report["metrics"]
    title = f"{args.model} on {os.path.basename(args.image)} {args.region or ''}"
    title += f": F1 {m['f1']:.3f}, foreground IoU {m['foreground_iou']:.3f}"
    plot_panel(f"{stem}.png", arrays, title)
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, str)}, indent=2))
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
