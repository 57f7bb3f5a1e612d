"""Evaluate a model on a labelled volume: a metrics JSON and a PNG panel (raw, label, prediction).

    PYTHONPATH=apps/axonseg python -m lib.evaluate mitochondria ../shared/data/lucchi_pp_train.h5 \\
        --dataset raw --label-dataset labels/mito --region 135:165,0:512,0:512 --tta 8 --out eval/

With ``--object-ids`` (true object ids, e.g. gala's neurons), the post-processing's label is also scored
as a segmentation of them: VOI split and merge, adapted Rand error (for instance outputs, ``trace``):

    PYTHONPATH=apps/axonseg python -m lib.evaluate membrane ../shared/data/gala_fibsem_train.h5 \
        --dataset raw --label-dataset labels/boundary --object-ids labels/neurons --voxel-size 10 10 10 \
        --postprocessing trace --out eval/

The image and label may be any supported format (TIFF, HDF5, Zarr, N5, NRRD, NIfTI). Raw label
values are mapped with the model's ``label_map`` (e.g. TRAILMAP 2 = axon, 1/3 = background;
0 = unlabelled and 4 = the edge band are ignored by every metric). Scoring is ``lib.protocol``'s,
the same the trainer, the model cards and ``benchmarks/quality.py`` use; ``--voxel-size`` (nm)
states the image's voxel size when its file does not, so it is resampled to the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from .configs.registry import MODEL_DIR, SPECS
from .figures import plot_panel
from .infers.postprocessing import resolve
from .infers.predict import TTA_VARIANTS
from .infers.predict import voxel_size_nm as image_voxel_size
from .machine import default_device, describe_machine
from .networks import load_weights
from .protocol import Evaluation, evaluate_region, parse_region
from .transforms.io import read_volume


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
    voxel_size_nm: tuple[float, float, float] | None = None,
    object_ids: str | None = None,
) -> tuple[dict[str, Any], Evaluation]:
    """Returns the report and the evaluation (arrays for the panel). ``object_ids``: a dataset of the label
    file holding true object ids (``protocol.evaluate_region``)."""
    spec = SPECS[model]
    image = read_volume(image_path, dataset)
    label = read_volume(label_path, label_dataset)
    ids = read_volume(label_path, object_ids).array if object_ids else None
    method, effective = resolve(spec, postprocessing, **(options or {}))  # bad options fail before inference
    device = device or default_device()
    weights = weights or os.path.join(MODEL_DIR, f"{model}.pt")
    network, meta = load_weights(weights, device)
    started = time.perf_counter()
    result = evaluate_region(
        spec, network, image.array, label.array, parse_region(region),
        voxel_size_nm=image_voxel_size(image, voxel_size_nm), tta=tta, device=device, method=method, options=effective,
        object_ids=ids,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    report = {
        "model": model,
        "weights": os.path.abspath(weights),
        "weights_epoch": meta.get("epoch"),
        "image": os.path.abspath(image_path),
        "dataset": dataset,
        "label": os.path.abspath(label_path),
        "label_dataset": label_dataset,
        "object_ids": object_ids,
        "region": region,
        **result.row,
        "postprocessing": {"method": method, **effective},
        "seconds": round(seconds, 2),
        "seconds_per_mvox": round(seconds / (result.raw.size / 1e6), 3),
        "device": device,
        "machine": describe_machine(),
    }
    return report, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("image")
    parser.add_argument("--label", help="label volume (default: the image file, with --label-dataset)")
    parser.add_argument("--dataset", help="dataset of the image inside HDF5/Zarr/N5")
    parser.add_argument("--label-dataset", help="dataset of the label inside HDF5/Zarr/N5")
    parser.add_argument("--object-ids", help="dataset of the label file with true object ids (VOI, adapted Rand)")
    parser.add_argument("--region", help="z0:z1,y0:y1,x0:x1 crop to evaluate on")
    parser.add_argument("--weights", help="weights file (default: the shipped model)")
    parser.add_argument("--tta", type=int, default=1, choices=TTA_VARIANTS)
    parser.add_argument("--device")
    parser.add_argument("--postprocessing", help="method (default: the model's): threshold, hysteresis, ...")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="the image's voxel size in nm, when its file does not state it")  # fmt: skip
    parser.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="post-processing option, e.g. --option high 0.98")  # fmt: skip
    parser.add_argument("--out", default="evaluation", help="folder for <model>.json and <model>.png")
    args = parser.parse_args(argv)
    report, result = evaluate(
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
        voxel_size_nm=tuple(args.voxel_size) if args.voxel_size else None,
        object_ids=args.object_ids,
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
    if "segmentation_voi" in m:
        title += f", VOI {m['segmentation_voi']:.2f}, adapted Rand {m['segmentation_adapted_rand_error']:.3f}"
    plot_panel(f"{stem}.png", [result], title)
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, str)}, indent=2))
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
