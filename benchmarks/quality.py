"""Segmentation quality of the shipped weights under the evaluation protocol (``lib.protocol``).

For every model: its test split and cross-microscope volumes (report-only: they chose nothing), at
each ``--tta`` (cross-microscope at TTA 1 only: resampled 50 nm ssTEM for the 5 nm model is large),
the select split apart (it chose the epoch), and the dense checks on unlabelled volumes. Writes
``benchmarks/quality.md`` and ``benchmarks/quality.json``:

    .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data] [--tta 1 8] [--models axon ...] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.configs.registry import CANDIDATE_DIR, CANDIDATES, MODEL_DIR, RECIPES, SPECS  # noqa: E402
from lib.figures import leave_one_out_table, metric_table  # noqa: E402
from lib.machine import default_device, describe_machine  # noqa: E402
from lib.networks import load_weights  # noqa: E402
from lib.protocol import run_protocol  # noqa: E402
from lib.trainers.report import leave_one_out  # noqa: E402


@dataclass(frozen=True)
class Goal:
    """A goal on held-out data: ``metric`` of the pooled test split (or of ``file``'s test row; a metric that is
    not pooled is judged on the worst test row) at least ``threshold``, or at most it when ``at_most``."""

    metric: str
    threshold: float
    what: str
    file: str | None = None
    at_most: bool = False


GOALS = {
    "axon": [
        Goal("f1", 0.85, "voxel F1 on the TRAILMAP test split"),
        Goal("artifact_marked_fraction", 0.05, "share of artifact-labelled voxels marked axon", at_most=True),
    ],
    "mitochondria": [
        Goal("foreground_iou", 0.88, "foreground IoU on the Lucchi++ test slab (PyTorch Connectomics: 0.892)",
             "lucchi_pp_train.h5"),
    ],
    "synapse": [Goal("detection_f1", 0.7, "object F1 on the held-out VNC slab", "drosophila_vnc_stack1_xlt512.h5")],
    "membrane": [
        Goal("f1", 0.85, "voxel F1 on the ssTEM test slab", "drosophila_vnc_stack1_xlt512.h5"),
        Goal("f1", 0.85, "voxel F1 on the ssTEM test slab", "isbi2012_sstem.h5"),
        Goal("f1", 0.7, "voxel F1 on FIB-SEM (cross-microscope for this model)", "gala_fibsem_train.h5"),
    ],
}  # fmt: skip
CANDIDATE_GOALS = {
    "mitochondria-em": [
        Goal("foreground_iou", 0.88, "foreground IoU on the Lucchi++ test slab (PyTorch Connectomics: 0.892)",
             "lucchi_pp_train.h5"),
    ],
    "membrane-em": [
        Goal("f1", 0.85, "voxel F1 on the ssTEM test slab", "drosophila_vnc_stack1_xlt512.h5"),
        Goal("f1", 0.85, "voxel F1 on the ssTEM test slab", "trakem2_sstem_cardona.h5"),
        Goal("f1", 0.7, "voxel F1 on the FIB-SEM test slab", "gala_fibsem_train.h5"),
    ],
}  # fmt: skip
# Leave-one-microscope-out goal: this figure on every microscope's test region, by the run trained without it.
LOMO_GOALS = {"mitochondria": ("foreground_iou", 0.6)}


def goal_line(goal: Goal, rows: list[dict], pooled: dict) -> str:
    # A named file's row of the test split, or of the cross-microscope volumes (report-only as well).
    tests = [r for r in rows if r["split"] == "test" or (goal.file and r["split"] == "cross")]
    tests = [r for r in tests if goal.file is None or r["file"] == goal.file]
    measured = [r["metrics"].get(goal.metric) for r in tests]
    values = [v for v in measured if v is not None and v == v]  # nan: nothing to judge in that region
    if goal.file is None and goal.metric in pooled:
        value = pooled[goal.metric]
    elif values:
        value = max(values) if goal.at_most else min(values)
    else:
        value = float("nan")
    where = f" ({goal.file})" if goal.file else ""
    sign = "<=" if goal.at_most else ">="
    if value != value:
        return f"Goal {goal.metric} {sign} {goal.threshold} ({goal.what}{where}): not measurable here (no such voxels)."
    met = value <= goal.threshold if goal.at_most else value >= goal.threshold
    return (
        f"Goal {goal.metric} {sign} {goal.threshold} ({goal.what}{where}): {'met' if met else '**not met**'}, "
        f"measured {value:.3f}."
    )


def weights_dir(model: str) -> Path:
    """Where a served model's weights are, or a candidate recipe's."""
    return Path(MODEL_DIR if model in SPECS else CANDIDATE_DIR)


def lomo_lines(model: str, spec, report: dict) -> list[str]:
    """The leave-one-microscope-out table and its goal, from the runs in the model folder."""
    rows = leave_one_out(spec, report, str(weights_dir(model)), model)
    if not rows:
        return []
    lines = ["Leave one microscope out (test region of each microscope: in-domain / trained without it):", ""]
    lines += leave_one_out_table(spec, rows) + [""]
    if spec.name in LOMO_GOALS:
        metric, threshold = LOMO_GOALS[spec.name]
        values = [r["metrics"][metric] for row in rows for r in row["left_out"] or []]
        missing = [row["microscope"] for row in rows if row["left_out"] is None]
        verdict = "met" if values and not missing and min(values) >= threshold else "**not met**"
        worst = f"lowest {min(values):.3f}" if values else "no run"
        lines += [f"Goal {metric} >= {threshold} left out, on every microscope: {verdict} ({worst}"
                  f"{'; not run: ' + ', '.join(missing) if missing else ''}).", ""]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tta", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=list(GOALS) + list(CANDIDATES), choices=list(RECIPES))
    parser.add_argument(
        "--reuse", action="store_true", help="TTA 1: read each model's <name>.protocol.json (written by the trainer or "
        "`lib.trainers.cli --evaluate-only` on the same weights) instead of running the protocol again"
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device = default_device()
    results: dict[str, dict] = {}
    for model in args.models:
        network, meta = load_weights(str(weights_dir(model) / f"{model}.pt"), device)
        runs = {}
        for tta in args.tta:
            saved = weights_dir(model) / f"{model}.protocol.json"
            if tta == 1 and args.reuse and saved.exists():  # the same protocol, as the trainer ran it on these weights
                runs[tta] = {**json.loads(saved.read_text()), "seconds": "read from " + saved.name}
                continue
            splits = ("select", "test", "cross") if tta == 1 else ("test",)
            started = time.perf_counter()
            report, _ = run_protocol(RECIPES[model], network, str(args.data_dir), splits=splits, tta=tta, device=device)
            report["seconds"] = round(time.perf_counter() - started, 1)
            runs[tta] = report
            print(json.dumps({"model": model, "tta": tta, "pooled": report["pooled"]}), flush=True)
        results[model] = {"weights_machine": meta.get("machine"), "weights_epoch": meta.get("epoch"), "runs": runs}

    lines = [
        "# Segmentation quality of the shipped weights",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/quality.py` on {describe_machine(device)} ({device}), "
        "under `lib/protocol.py`: each recipe splits its data into train, select (chose the epoch and "
        "post-processing) and test (chose nothing); cross-microscope volumes are report-only too. Post-processed "
        "predictions, labelled voxels only. IoU is **foreground IoU**; AP is the mean over IoU 0.5:0.95 of "
        "TP/(TP+FP+FN); detection counts connected components matched by overlap; `background_fp_fraction` is the "
        "share of voxels marked in fully labelled slices without the structure; `artifact_marked_fraction` the share "
        "of artifact-labelled voxels marked. TTA 8 averages all z/y/x flips. Candidates (not served) come last, "
        "with their leave-one-microscope-out runs.",
        "",
    ]
    if args.reuse:
        lines += [
            "TTA 1 figures are each model's own protocol report (`--reuse`: `<name>.protocol.json`, written by its "
            "trainer or by `lib.trainers.cli --evaluate-only` on the same weights); "
            + ("no TTA 8 run this time." if 8 not in args.tta else "TTA 8 was run here."),
            "",
        ]
    for model, result in results.items():
        spec = RECIPES[model]
        trained = f"Weights: epoch {result['weights_epoch']}, trained on {result['weights_machine']}."
        status = "" if model in SPECS else f" (a candidate for `{spec.name}`, not served)"
        lines += [f"## {model}{status}", "", trained, ""]
        for tta, report in result["runs"].items():
            shown = [r for r in report["rows"] if r["split"] != "select"]
            took = f"{report['seconds']} s" if isinstance(report["seconds"], float) else report["seconds"]
            lines += [f"Test and cross-microscope, TTA {tta} ({took}):", ""]
            lines += metric_table(spec, shown) + [""]
            if "test" in report["pooled"]:
                p = report["pooled"]["test"]
                lines.append(
                    f"Pooled test, TTA {tta}: precision {p['precision']:.3f}, recall {p['recall']:.3f}, "
                    f"F1 {p['f1']:.3f}, foreground IoU {p['foreground_iou']:.3f}."
                )
                goals = GOALS.get(model, []) if model in SPECS else CANDIDATE_GOALS.get(model, [])
                lines += [goal_line(goal, report["rows"], p) for goal in goals] + [""]
        first = result["runs"][args.tta[0]]
        lines += lomo_lines(model, spec, first)
        for check in first["unlabelled"]:
            lines.append(
                f"Unlabelled `{check['file']}`: {100 * check['foreground_fraction']:.1f} % marked {spec.label_name} "
                f"(plausible {100 * check['plausible'][0]:.0f}-{100 * check['plausible'][1]:.0f} %: "
                f"{'within' if check['within'] else '**outside**'})."
            )
        select = [r for r in first["rows"] if r["split"] == "select"]
        if select:
            lines += ["", "Select split (chose the epoch; not a result):", ""] + metric_table(spec, select)
        panel = weights_dir(model).relative_to(ROOT) / f"{model}.test_panel.png"
        lines += ["", f"Panel: `{panel}`.", ""]
    (ROOT / "benchmarks" / "quality.md").write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "quality.json").write_text(json.dumps(results, indent=1, default=str))
    print((ROOT / "benchmarks" / "quality.md").read_text())


if __name__ == "__main__":
    main()
