"""Ablation: does a self-supervised pretrained encoder help when only 1, 2 or 4 cubes are labelled?

For each structure, the encoder of its U-Net is pretrained once per pretext task on unlabelled raw
data (``lib.trainers.pretrain``):

- axon: ``trailmap_example_chunk_unlabeled.h5`` (the unlabelled whole-brain chunk);
- mitochondria: the Lucchi++ raw volume, training region only (z < 133): the held-out slab's voxels
  are never seen, not even unlabelled.

Then the U-Net is fine-tuned from scratch ("none") or from each pretrained encoder with a fresh
decoder, on 1, 2 or 4 labelled cubes, with the same schedule for every condition. Per seed the
cubes are a nested random draw (the 1-cube set is inside the 2-cube set, inside the 4-cube set), the
same for every condition. The last epoch's weights are scored on held-out labelled data (nothing is
selected on it): voxel F1 and foreground IoU of the post-processed prediction.

- axon cubes: the 8 training cubes of ``trailmap_cubes_training.h5`` (64^3, sparse labels);
  held out: cubes 8 and 9 (the recipe's validation cubes).
- mitochondria cubes: 64x128x128 cubes of Lucchi++ z < 128 with at least 2 % mitochondria;
  held out: z 133-165, y < 256, x < 384.

    .venv/bin/python benchmarks/ssl_ablation.py [--structures axon mitochondria --cubes 1 2 4 --seeds 0 1 2 ...]

writes ``benchmarks/ssl.md``, ``benchmarks/ssl.png`` and the raw numbers ``benchmarks/reports/ssl.json``
(``--report-only`` re-renders the first two from the JSON).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.configs.registry import SPECS  # noqa: E402
from lib.configs.spec import DataSource  # noqa: E402
from lib.machine import default_device, describe_machine  # noqa: E402
from lib.networks import load_weights  # noqa: E402
from lib.protocol import score_volumes  # noqa: E402
from lib.trainers.augmentation import training_transforms  # noqa: E402
from lib.trainers.data import TrainingVolume, load_source  # noqa: E402
from lib.trainers.pretext import PRETEXT_TASKS, make_pretext_task  # noqa: E402
from lib.trainers.pretrain import pretrain_encoder  # noqa: E402
from lib.trainers.supervised import TrainingPlan, train_segmentation  # noqa: E402
from lib.transforms.intensity import normalize_percentiles  # noqa: E402
from lib.transforms.io import read_volume  # noqa: E402
from lib.volumes.regions import grid, region_id  # noqa: E402

LUCCHI = "lucchi_pp_train.h5"
MITO_CUBE = (64, 128, 128)
MITO_CUBE_REGION = (0, 128)  # z range the labelled cubes come from (inside the recipe's training region)
MITO_HELD_OUT = DataSource(LUCCHI, "labels/mito", region=((133, 165), (0, 256), (0, 384)))
# Unlabelled pretraining data: (file, dataset, z range).
PRETRAIN_DATA = {
    "axon": ("trailmap_example_chunk_unlabeled.h5", "raw", (None, None)),
    "mitochondria": (LUCCHI, "raw", (0, 133)),
}


def pretraining_volumes(data_dir: Path, structure: str) -> list[np.ndarray]:
    file, dataset, (z0, z1) = PRETRAIN_DATA[structure]
    raw = read_volume(str(data_dir / file), dataset).array[z0:z1]
    return [normalize_percentiles(raw, SPECS[structure].percentiles)]


def labelled_cubes(data_dir: Path, structure: str) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
    """(candidate training cubes, held-out volumes) of a structure."""
    spec = SPECS[structure]
    if structure == "axon":
        cubes = [load_source(str(data_dir), s, spec) for s in spec.recipe.train]
        return cubes, [load_source(str(data_dir), s, spec) for s in spec.recipe.select]
    region = ((MITO_CUBE_REGION[0], MITO_CUBE_REGION[1]), (None, None), (None, None))
    slab = load_source(str(data_dir), DataSource(LUCCHI, "labels/mito", region=region), spec)
    cubes = []
    for block in grid(slab.image.shape, MITO_CUBE):
        target = slab.target[block.slices]
        if target.mean() >= 0.02:
            name = region_id("lucchi", block, False)
            cubes.append(TrainingVolume(name, slab.image[block.slices], target, slab.mask[block.slices]))
    return cubes, [load_source(str(data_dir), MITO_HELD_OUT, spec)]


def pretrain(args, structure: str, task_name: str, out: Path, device: str) -> dict:
    spec = SPECS[structure]
    task = make_pretext_task(task_name, seed=0)
    volumes = pretraining_volumes(args.data_dir, structure)
    if task_name == "slice_permutation":
        iterations, batch = args.permutation_iterations, 8
    else:
        iterations, batch = args.reconstruction_iterations, 2
    started = time.time()
    history = []

    def on_epoch(stats) -> None:
        history.append({"epoch": stats.epoch, "loss": stats.loss, **stats.validation})
        print(f"  pretrain {structure}/{task_name} epoch {stats.epoch}: loss {stats.loss:.4f} {stats.validation}")

    pretrain_encoder(
        spec,
        task,
        volumes,
        str(out),
        epochs=args.pretrain_epochs,
        iterations_per_epoch=iterations,
        batch_size=batch,
        learning_rate=args.pretrain_learning_rate,
        seed=0,
        device=device,
        on_epoch=on_epoch,
    )
    return {"minutes": (time.time() - started) / 60, "iterations": iterations, "batch": batch, "history": history}


def fine_tune(args, structure, cubes, held_out, encoder: Path | None, seed: int, device: str) -> dict:
    spec = SPECS[structure]
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "weights.pt")
        started = time.time()
        train_segmentation(
            spec,
            cubes,
            [],  # nothing to select on: the last epoch is scored
            weights,
            TrainingPlan(
                epochs=args.epochs,
                iterations_per_epoch=args.iterations,
                batch_size=spec.recipe.batch_size,
                learning_rate=args.learning_rate,
                foreground_fraction=spec.recipe.foreground_fraction,
                seed=seed,
                pretrained_encoder=str(encoder) if encoder else None,
                freeze_encoder_epochs=args.freeze_epochs if encoder else 0,
                transforms=training_transforms(spec),
                device=device,
            ),
        )
        seconds = time.time() - started
        network, _ = load_weights(weights, device)
    scores = score_volumes(network, held_out, spec, device)
    return {"f1": scores["f1"], "foreground_iou": scores["foreground_iou"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--structures", nargs="+", default=["axon", "mitochondria"], choices=sorted(PRETRAIN_DATA))
    parser.add_argument("--tasks", nargs="+", default=["slice_permutation", "edges"], choices=PRETEXT_TASKS)
    parser.add_argument("--cubes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--iterations", type=int, default=20, help="fine-tuning iterations per epoch")
    parser.add_argument("--freeze-epochs", type=int, default=1, help="epochs the pretrained encoder stays frozen")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    # About the same CPU time per task: a permutation step runs the encoder on 8-slice crops only,
    # a reconstruction step the whole U-Net on full patches.
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-3)
    parser.add_argument("--permutation-iterations", type=int, default=160, help="per epoch, batch 8")
    parser.add_argument("--reconstruction-iterations", type=int, default=30, help="per epoch, batch 2")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument(
        "--report-only", action="store_true", help="re-render ssl.md and ssl.png from reports/ssl.json, train nothing"
    )
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads((args.out / "reports" / "ssl.json").read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    device = default_device()
    started = time.time()
    results: dict = {"pretraining": {}, "runs": []}
    with tempfile.TemporaryDirectory() as encoders:
        for structure in args.structures:
            cubes, held_out = labelled_cubes(args.data_dir, structure)
            print(f"{structure}: {len(cubes)} candidate cubes, held out {[v.name for v in held_out]}", flush=True)
            # What predicting foreground everywhere scores: the floor a model has to clear.
            share = np.mean(np.concatenate([v.target[v.mask] for v in held_out]))
            results.setdefault("all_foreground_f1", {})[structure] = float(2 * share / (1 + share))
            paths: dict[str, Path | None] = {"none": None}
            for task_name in args.tasks:
                paths[task_name] = Path(encoders) / f"{structure}-{task_name}.pt"
                results["pretraining"][f"{structure}/{task_name}"] = pretrain(
                    args, structure, task_name, paths[task_name], device
                )
            for seed in args.seeds:
                order = np.random.default_rng(seed).permutation(len(cubes))
                for n in args.cubes:
                    chosen = [cubes[i] for i in order[:n]]
                    for condition, encoder in paths.items():
                        result = fine_tune(args, structure, chosen, held_out, encoder, seed, device)
                        result.update(structure=structure, cubes=n, seed=seed, condition=condition)
                        result["cube_names"] = [c.name for c in chosen]
                        results["runs"].append(result)
                        print(
                            f"{structure} n={n} seed={seed} {condition}: F1 {result['f1']:.3f} "
                            f"IoU {result['foreground_iou']:.3f} ({result['seconds']:.0f} s)",
                            flush=True,
                        )
    results["minutes"] = (time.time() - started) / 60
    results["machine"] = describe_machine(device)
    results["command"] = ".venv/bin/python benchmarks/ssl_ablation.py " + shlex.join(sys.argv[1:])
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "reports").mkdir(parents=True, exist_ok=True)
    (args.out / "reports" / "ssl.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out)


def summarise(runs: list[dict]) -> dict:
    """``{(structure, cubes, condition): (F1 values, IoU values)}`` over seeds."""
    table: dict = {}
    for run in runs:
        key = (run["structure"], run["cubes"], run["condition"])
        table.setdefault(key, ([], []))
        table[key][0].append(run["f1"])
        table[key][1].append(run["foreground_iou"])
    return {k: (np.array(f), np.array(i)) for k, (f, i) in table.items()}


def _verdict(diff: np.ndarray) -> str:
    sd = diff.std(ddof=1) if len(diff) > 1 else 0.0
    return "above" if diff.mean() > sd else "below" if diff.mean() < -sd else "within noise of"


def summary_lines(results: dict, table: dict, structures, conditions, counts) -> list[str]:
    """The finding in a few sentences, computed from the same numbers as the tables."""
    above = [
        f"`{c}` on {s} with {n} cube(s)"
        for s in structures
        for c in conditions[1:]
        for n in counts
        if _verdict(table[(s, n, c)][0] - table[(s, n, "none")][0]) == "above"
    ]
    lines = [
        "**Result.** "
        + (
            "Pretraining beat no pretraining by more than the seed-to-seed spread for " + "; ".join(above) + "."
            if above
            else "No pretext task beat no pretraining by more than the seed-to-seed spread, for either structure "
            "or any number of labelled cubes; most mean differences are small and negative."
        )
    ]
    solved = [k for k, v in results["pretraining"].items() if v["history"][-1].get("accuracy", 0) >= 0.99]
    if solved:
        lines.append(
            f"The permutation task was solved outright ({', '.join(solved)}: accuracy 1.0 on the fixed crops), "
            "so it likely stopped teaching the encoder early: on isotropic EM, adjacent-slice continuity "
            "alone may give the answer."
        )
    lines.append(
        f"These are short schedules ({results['args']['epochs']} x {results['args']['iterations']} fine-tuning "
        "iterations, a few CPU minutes of pretraining): the models are far from converged (the shipped models "
        "reach held-out F1 0.86 for axons and 0.87 for mitochondria with their full recipes), so this measures "
        "the early, few-label regime on a CPU, not what longer pretraining on a GPU might give."
    )
    return lines


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = results["args"]
    table = summarise(results["runs"])
    structures = list(dict.fromkeys(r["structure"] for r in results["runs"]))
    conditions = list(dict.fromkeys(r["condition"] for r in results["runs"]))
    counts = sorted({r["cubes"] for r in results["runs"]})
    fig, axes = plt.subplots(1, len(structures), figsize=(4.5 * len(structures), 3.6), dpi=100, squeeze=False)
    for ax, structure in zip(axes[0], structures):
        for offset, condition in enumerate(conditions):
            f1 = [table[(structure, n, condition)][0] for n in counts]
            x = np.arange(len(counts)) + (offset - (len(conditions) - 1) / 2) * 0.08
            sd = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in f1]
            ax.errorbar(x, [v.mean() for v in f1], yerr=sd, fmt="o-", capsize=3, label=condition)
        ax.set_xticks(range(len(counts)), [str(n) for n in counts])
        ax.set_xlabel("labelled cubes")
        ax.set_ylabel("held-out voxel F1")
        ax.set_title(structure)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Fine-tuning from pretrained encoders (mean ± sd over {len(args['seeds'])} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "ssl.png")

    def cell(values: np.ndarray) -> str:
        return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

    lines = [
        "# Self-supervised pretraining ablation",
        "",
        "Does an encoder pretrained without labels give a better model from 1, 2 or 4 labelled cubes?",
        f"Measured by `benchmarks/ssl_ablation.py` on {results['machine']}; the whole run took "
        f"{results['minutes']:.0f} min.",
        "",
        "![held-out F1 per condition](ssl.png)",
        "",
        *[part for line in summary_lines(results, table, structures, conditions, counts) for part in (line, "")],
        "",
        "## Set-up",
        "",
        "- Pretraining (once per structure and pretext task, seed 0): "
        f"{args['pretrain_epochs']} epochs of {args['permutation_iterations']} iterations at batch 8 "
        f"(`slice_permutation`, encoder only) or {args['reconstruction_iterations']} at batch 2 "
        f"(reconstruction, whole U-Net), a few CPU minutes each (table below); AdamW lr "
        f"{args['pretrain_learning_rate']} with cosine decay; crops are the most contrasted quarter of "
        "uniform draws. Axon: "
        "`trailmap_example_chunk_unlabeled.h5`; mitochondria: Lucchi++ raw z < 133 (the held-out slab is "
        "never seen). `slice_permutation`: 8 x H x W crops (H x W the model's patch), 10 max-Hamming "
        "permutations, classifier on the bottleneck. `edges`: 40 % of 1/8-size blocks hidden, the U-Net "
        "predicts the Sobel edge map of the whole crop. `masked` (fill the hidden blocks in) "
        + ("was run too." if "masked" in args["tasks"] else "exists but was not run here (`--tasks`)."),
        f"- Fine-tuning (every condition the same): {args['epochs']} epochs x {args['iterations']} "
        f"iterations, the recipe's batch size and augmentation (without reference-data steps), lr "
        f"{args['learning_rate']}; a pretrained encoder stays frozen for the first {args['freeze_epochs']} "
        "epoch(s) while the fresh decoder adapts. `none` starts from random weights.",
        "- Labelled cubes: axon, the 64³ TRAILMAP training cubes (sparse labels); mitochondria, 64x128x128 "
        "cubes of Lucchi++ z < 128 with ≥ 2 % mitochondria. Per seed a nested random draw, the same for "
        "every condition.",
        "- Held out (never trained or selected on): axon, TRAILMAP cubes 8 and 9 (labelled voxels only); "
        "mitochondria, Lucchi++ z 133-165, y < 256, x < 384. The last epoch's weights are scored: voxel F1 "
        "and foreground IoU after the structure's post-processing.",
        "",
        "## Pretext tasks",
        "",
        "| structure / task | last epoch loss | score on fixed crops | minutes |",
        "|---|---|---|---|",
    ]
    for key, value in results["pretraining"].items():
        last = value["history"][-1]
        score = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k not in ("epoch", "loss"))
        lines.append(f"| {key} | {last['loss']:.4f} | {score} | {value['minutes']:.1f} |")
    lines += ["", "Chance accuracy for `slice_permutation` is 0.100.", ""]
    for structure in structures:
        lines += [
            f"## {structure}: held-out voxel F1 (foreground IoU), mean ± sd over seeds {args['seeds']}",
            "",
            "| condition | " + " | ".join(f"{n} cube(s)" for n in counts) + " |",
            "|---|" + "---|" * len(counts),
        ]
        for condition in conditions:
            cells = [
                f"{cell(table[(structure, n, condition)][0])} ({table[(structure, n, condition)][1].mean():.3f})"
                for n in counts
            ]
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Predicting foreground everywhere would score F1 {results['all_foreground_f1'][structure]:.3f} "
            "on these held-out voxels.",
            "",
        ]
        for condition in conditions[1:]:
            gaps = []
            for n in counts:
                diff = table[(structure, n, condition)][0] - table[(structure, n, "none")][0]  # paired by seed
                sd = diff.std(ddof=1) if len(diff) > 1 else 0.0
                gaps.append(f"{n}: {diff.mean():+.3f} ± {sd:.3f} ({_verdict(diff)} none)")
            lines.append(f"- `{condition}` − `none`, paired by seed: " + "; ".join(gaps) + ".")
        lines.append("")
    lines += [
        "A gap counts as above or below `none` only when the mean paired difference exceeds its sd over seeds; "
        "with 3 seeds this is a rough screen, not a significance test. A GPU rerun with longer pretraining and "
        "fine-tuning (`--pretrain-epochs`, `--epochs`, `--iterations`) is the next step.",
        "",
        "## Reproduce",
        "",
        "```",
        results["command"],
        "```",
        "",
        "Raw numbers per run (seed, cubes used, seconds): `benchmarks/reports/ssl.json`.",
        "",
    ]
    (out / "ssl.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
