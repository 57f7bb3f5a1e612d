"""Segmentation quality of the shipped weights under the evaluation protocol (``lib.protocol``).

For every model: its test split and cross-microscope volumes (report-only: they chose nothing), at
each ``--tta`` (cross-microscope at TTA 1 only: resampled 50 nm ssTEM for the 5 nm model is large),
the select split apart (it chose the epoch), and the dense checks on unlabelled volumes. Writes
``benchmarks/quality.md`` and ``benchmarks/quality.json``:

    .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data] [--tta 1 8] [--models axon ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.configs.registry import MODEL_DIR, SPECS  # noqa: E402
from lib.figures import metric_table  # noqa: E402
from lib.machine import default_device, describe_machine  # noqa: E402
from lib.networks import load_weights  # noqa: E402
from lib.protocol import run_protocol  # noqa: E402

# The goals, each judged on the pooled test split (metric, threshold).
GOALS = {
    "axon": ("f1", 0.85, "voxel F1 on the TRAILMAP test split"),
    "mitochondria": ("foreground_iou", 0.88, "foreground IoU on the Lucchi++ test slab (PyTorch Connectomics: 0.88)"),
    "synapse": ("detection_f1", 0.6, "object F1 on the held-out VNC slab"),
    "membrane": ("f1", 0.85, "voxel F1 on the ssTEM test slabs"),
}


def goal_line(model: str, rows: list[dict], pooled: dict) -> str:
    metric, threshold, what = GOALS[model]
    tests = [r for r in rows if r["split"] == "test"]
    value = pooled.get(metric) if metric in pooled else (tests[0]["metrics"][metric] if tests else float("nan"))
    verdict = "met" if value >= threshold else "**not met**"
    return f"Goal {metric} >= {threshold} ({what}): {verdict}, measured {value:.3f}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tta", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=list(GOALS))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device = default_device()
    results: dict[str, dict] = {}
    for model in args.models:
        network, meta = load_weights(str(Path(MODEL_DIR) / f"{model}.pt"), device)
        runs = {}
        for tta in args.tta:
            splits = ("select", "test", "cross") if tta == 1 else ("test",)
            started = time.perf_counter()
            report, _ = run_protocol(SPECS[model], network, str(args.data_dir), splits=splits, tta=tta, device=device)
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
        "share of voxels marked in fully labelled slices without the structure. TTA 8 averages all z/y/x flips.",
        "",
    ]
    for model, result in results.items():
        spec = SPECS[model]
        trained = f"Weights: epoch {result['weights_epoch']}, trained on {result['weights_machine']}."
        lines += [f"## {model}", "", trained, ""]
        for tta, report in result["runs"].items():
            shown = [r for r in report["rows"] if r["split"] != "select"]
            lines += [f"Test and cross-microscope, TTA {tta} ({report['seconds']} s):", ""]
            lines += metric_table(spec, shown) + [""]
            if "test" in report["pooled"]:
                p = report["pooled"]["test"]
                lines.append(
                    f"Pooled test, TTA {tta}: precision {p['precision']:.3f}, recall {p['recall']:.3f}, "
                    f"F1 {p['f1']:.3f}, foreground IoU {p['foreground_iou']:.3f}."
                )
                lines += [goal_line(model, report["rows"], p), ""]
        first = result["runs"][args.tta[0]]
        for check in first["unlabelled"]:
            lines.append(
                f"Unlabelled `{check['file']}`: {100 * check['foreground_fraction']:.1f} % marked {spec.label_name} "
                f"(plausible {100 * check['plausible'][0]:.0f}-{100 * check['plausible'][1]:.0f} %: "
                f"{'within' if check['within'] else '**outside**'})."
            )
        select = [r for r in first["rows"] if r["split"] == "select"]
        if select:
            lines += ["", "Select split (chose the epoch; not a result):", ""] + metric_table(spec, select)
        lines += ["", f"Panel: `apps/axonseg/model/{model}.test_panel.png`.", ""]
    (ROOT / "benchmarks" / "quality.md").write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "quality.json").write_text(json.dumps(results, indent=1, default=str))
    print((ROOT / "benchmarks" / "quality.md").read_text())


if __name__ == "__main__":
    main()
