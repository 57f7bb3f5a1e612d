"""Segmentation quality of the shipped weights on their held-out validation slabs, with and without TTA.

For every model and every validation source of its recipe (the regions no training patch came
from; see the model cards), runs ``lib.evaluate.evaluate`` with ``--tta 1`` and ``--tta 8`` and
writes ``benchmarks/quality.md``:

    .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data] [--tta 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.configs.registry import SPECS  # noqa: E402
from lib.evaluate import evaluate  # noqa: E402
from lib.machine import describe_machine  # noqa: E402

MITO_GOAL = 0.88
# The figures each structure is judged by (all on labelled voxels only).
COLUMNS = {
    "axon": ("f1", "precision", "recall", "cl_dice", "roc_auc"),
    "mitochondria": ("foreground_iou", "f1", "instance_f1", "ap", "roc_auc"),
    "synapse": ("f1", "detection_f1", "cremi_distance", "roc_auc"),
    "membrane": ("f1", "foreground_iou", "roc_auc"),
}


def region_text(region) -> str:
    return ",".join(f"{a if a is not None else ''}:{b if b is not None else ''}" for a, b in region)


def evaluate_command(row: dict) -> str:
    shown = os.path.relpath(row["image"], ROOT)  # the command runs from the repository root
    return (
        f"PYTHONPATH=apps/axonseg .venv/bin/python -m lib.evaluate {row['model']} {shown} "
        f"--dataset {row['dataset']} --label-dataset {row['label_dataset']} --region {row['region']} --tta {row['tta']}"
    )


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's mitochondria goal against what was measured (no claim without a row behind it)."""
    mito = [r for r in rows if r["model"] == "mitochondria"]
    if not mito:
        return []
    best = max(mito, key=lambda r: r["metrics"]["foreground_iou"])
    met = best["metrics"]["foreground_iou"] >= MITO_GOAL
    return [
        f"Mitochondria goal (Lucchi++ hold-out foreground IoU >= {MITO_GOAL}, published 0.87-0.90): "
        + ("met" if met else "**not met**")
        + f"; best row {best['metrics']['foreground_iou']:.3f} (TTA {best['tta']}).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tta", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=list(COLUMNS))
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for source in SPECS[model].recipe.val:
            for tta in args.tta:
                path = str(args.data_dir / source.file)
                report, _ = evaluate(
                    model, path, path, dataset=source.raw, label_dataset=source.label,
                    region=region_text(source.region), tta=tta,
                )  # fmt: skip
                rows.append(report)
                print(json.dumps({"model": model, "source": source.file, "tta": tta, **report["metrics"]}), flush=True)

    lines = [
        "# Segmentation quality of the shipped weights",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/quality.py` on {describe_machine()} "
        f"({rows[0]['device'] if rows else 'cpu'}). Each row is a model's held-out validation slab (no training "
        "patch came from it; see `apps/axonseg/model/<model>.md`), post-processed with the model's default "
        "method (axon, synapse: threshold + size filter; mitochondria: distance-transform watershed; membrane: "
        "bilateral filter + erosion/dilation), scored on labelled voxels only. "
        "IoU is **foreground IoU** (Jaccard of the structure). "
        "AP is the mean over IoU 0.5:0.95 of TP/(TP+FP+FN) (DSB-2018 definition). CREMI distance is the mean of "
        "the false-positive and false-negative average distances, in µm. TTA 8 averages all z/y/x flips.",
        "",
    ]
    for model in args.models:
        cols = COLUMNS[model]
        lines += [f"## {model}", "", "| row | slab | shape | TTA | " + " | ".join(cols) + " | s/Mvox |"]
        lines.append("|---" * (len(cols) + 5) + "|")
        commands = []
        for r in (r for r in rows if r["model"] == model):
            values = " | ".join(f"{r['metrics'].get(c, float('nan')):.3f}" for c in cols)
            slab = f"{Path(r['image']).name}:{r['label_dataset']} [{r['region']}]"
            shape = "x".join(map(str, r["shape"]))
            commands.append(evaluate_command(r))
            lines.append(
                f"| {len(commands)} | {slab} | {shape} | {r['tta']} | {values} | {r['seconds_per_mvox']:.2f} |"
            )
        lines += ["", "Reproduce a row (JSON and a PNG panel land in `evaluation/`):", "", "```"]
        lines += [f"# row {i}\n{command}" for i, command in enumerate(commands, 1)] + ["```", ""]
    lines += goal_lines(rows)
    out = ROOT / "benchmarks" / "quality.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
