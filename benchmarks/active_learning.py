"""Simulated active learning on Lucchi++ mitochondria: does uncertainty sampling beat random?

An oracle annotator labels blocks from the ground truth. The training region of the mitochondria
recipe (z < 133) is cut into blocks of 32x128x128; a model starts from one labelled block and, each
round, a strategy picks ``k`` blocks from a fixed random pool of candidates, the oracle labels them,
and the model is fine-tuned briefly on every labelled block (warm start, the recipe's augmentation).
After every round, voxel Dice and foreground IoU are measured on a fixed held-out crop of the
validation slab (z 133-165), which no strategy ever sees.

Strategies use the project's own scoring (``lib.activelearning.scoring``): ``random``,
``epistemic`` (MC-dropout predictive entropy) and ``tta`` (variance across 8 flips). Every
strategy starts from the same first block and the same initial weights.

    .venv/bin/python benchmarks/active_learning.py [--rounds 3 --k 2 --pool 10 --iterations 60 --seeds 0]

writes ``benchmarks/reports/active_learning_<device>.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.activelearning.scoring import epistemic_score, tta_score  # noqa: E402
from lib.configs.registry import SPECS  # noqa: E402
from lib.configs.spec import DataSource  # noqa: E402
from lib.machine import default_device, describe_machine  # noqa: E402
from lib.networks import build_network, save_weights  # noqa: E402
from lib.trainers.augmentation import training_transforms  # noqa: E402
from lib.trainers.data import TrainingVolume, load_source  # noqa: E402
from lib.trainers.supervised import train_segmentation, validate  # noqa: E402
from lib.transforms.intensity import intensity_stats, normalize  # noqa: E402
from lib.transforms.io import read_volume  # noqa: E402
from lib.volumes.regions import grid, region_id  # noqa: E402

SPEC = SPECS["mitochondria"]
BLOCK = (32, 128, 128)
POOL_REGION = ((0, 128), (None, None), (None, None))  # inside the recipe's training region (z < 133)
VALIDATION = DataSource("lucchi_pp_train.h5", "labels/mito", region=((133, 165), (0, 384), (0, 512)))
STRATEGIES = ("random", "epistemic", "tta")


def score(method: str, network: torch.nn.Module, raw: np.ndarray, device: str) -> float:
    if method == "epistemic":
        return epistemic_score(network, raw, SPEC, device, samples=4)
    return tta_score(network, raw, SPEC, device, tta=8)


def run(strategy: str, seed: int, args, raws, volumes, val, start, pool: list[int], init: dict, device, workdir):
    """One strategy's learning curve: ``[(labelled blocks, Dice, IoU, seconds)]``."""
    rng = np.random.default_rng(seed + 1)
    network = build_network(**SPEC.network_args()).to(device)
    network.load_state_dict(init)
    labelled, candidates = [start], [i for i in pool if i != start]
    weights = str(workdir / f"{strategy}.pt")
    transforms = training_transforms(SPEC)
    curve = []
    started = time.time()
    for round_ in range(args.rounds + 1):
        if round_:
            if strategy == "random":
                picks = list(rng.choice(candidates, size=args.k, replace=False))
            else:
                scores = {i: score(strategy, network, raws[i], device) for i in candidates}
                picks = sorted(candidates, key=lambda i: -scores[i])[: args.k]  # a real top-k
            labelled += [int(i) for i in picks]
            candidates = [i for i in candidates if i not in picks]
        save_weights(weights, network, SPEC.network_args(), {"strategy": strategy})
        train_segmentation(
            SPEC,
            [volumes[i] for i in labelled],
            [],  # no peeking at validation: keep the last epoch
            weights,
            epochs=1,
            iterations_per_epoch=args.iterations,
            batch_size=2,
            learning_rate=SPEC.recipe.learning_rate,
            foreground_fraction=SPEC.recipe.foreground_fraction,
            seed=seed + round_,
            init_weights=weights,
            transforms=transforms,
            device=device,
        )
        network.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
        scores = validate(network, [val], SPEC, device)
        curve.append((len(labelled), scores["f1"], scores["foreground_iou"], time.time() - started))
        print(json.dumps({"strategy": strategy, "seed": seed, "labelled": len(labelled), **scores}), flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--pool", type=int, default=10, help="candidate blocks scored each round")
    parser.add_argument("--iterations", type=int, default=60, help="fine-tuning iterations per round")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one full run per seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    args = parser.parse_args()
    device = default_device()
    path = str(args.data_dir / "lucchi_pp_train.h5")
    region = tuple(slice(a, b) for a, b in POOL_REGION)
    raw = read_volume(path, "raw").array[region]
    label = read_volume(path, "labels/mito").array[region]
    blocks = grid(raw.shape, BLOCK)
    raws = [raw[b.slices] for b in blocks]
    # Each block is a region of the pool, normalised by the pool's statistics, as the app serves and trains regions.
    stats = intensity_stats(raw)
    volumes = [
        TrainingVolume(
            region_id("lucchi", b, False),
            normalize(r, stats, SPEC.percentiles),
            (label[b.slices] > 0).astype(np.uint8),
            np.ones(b.shape, bool),
        )
        for b, r in zip(blocks, raws)
    ]
    val = load_source(str(args.data_dir), VALIDATION, SPEC)
    workdir = args.out / "active_learning_work"
    workdir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list] = {s: [] for s in STRATEGIES}
    for seed in args.seeds:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        with_mito = [i for i, v in enumerate(volumes) if v.target.mean() > 0.02]
        start = int(rng.choice(with_mito))  # every strategy starts from the same labelled block
        pool = sorted({start, *rng.choice(len(blocks), size=args.pool, replace=False).tolist()})
        init = copy.deepcopy(build_network(**SPEC.network_args()).state_dict())
        for strategy in STRATEGIES:
            curves[strategy].append(run(strategy, seed, args, raws, volumes, val, start, pool, init, device, workdir))
    for leftover in workdir.iterdir():
        leftover.unlink()
    workdir.rmdir()
    write_report(args, curves, device, len(blocks), val)


def write_report(args, curves: dict, device: str, n_blocks: int, val: TrainingVolume) -> None:
    """Mean (and sd over seeds) held-out Dice / IoU per round; a PNG of the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "gpu" if device.startswith("cuda") else "cpu"
    png = args.out / f"active_learning_{name}.png"
    counts = [c[0] for c in curves[STRATEGIES[0]][0]]
    dice = {s: np.array([[c[1] for c in run] for run in runs]) for s, runs in curves.items()}
    iou = {s: np.array([[c[2] for c in run] for run in runs]) for s, runs in curves.items()}
    minutes = {s: np.mean([run[-1][3] for run in runs]) / 60 for s, runs in curves.items()}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for strategy in STRATEGIES:
        for ax, values in zip(axes, (dice[strategy], iou[strategy])):
            ax.errorbar(counts, values.mean(0), yerr=values.std(0), fmt="o-", capsize=3, label=strategy)
    for ax, metric in zip(axes, ("voxel Dice", "foreground IoU")):
        ax.set_xlabel(f"labelled blocks ({BLOCK[0]}x{BLOCK[1]}x{BLOCK[2]})")
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Lucchi++ mitochondria, simulated annotator ({len(args.seeds)} seed(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)

    def cell(d: np.ndarray, i: np.ndarray, r: int) -> str:
        sd = f" ± {d[:, r].std():.3f}" if len(d) > 1 else ""
        return f"{d[:, r].mean():.3f}{sd} / {i[:, r].mean():.3f}"

    rows = [
        f"| {s} | " + " | ".join(cell(dice[s], iou[s], r) for r in range(len(counts))) + f" | {minutes[s]:.0f} |"
        for s in STRATEGIES
    ]
    final = {s: dice[s][:, -1] for s in STRATEGIES}
    lines = []
    for s in ("epistemic", "tta"):
        gap = final[s] - final["random"]
        lines.append(
            f"`{s}` − `random` after {counts[-1]} blocks: {gap.mean():+.3f} Dice"
            + (f" (sd over seeds {gap.std():.3f})" if len(gap) > 1 else "")
            + "."
        )
    above = [s for s in ("epistemic", "tta") if (final[s] - final["random"]).mean() > 0]
    lines.append(
        f"In this run {' and '.join(f'`{s}`' for s in above)} ended above random."
        if above
        else "In this run no uncertainty strategy ended above random."
    )
    if len(args.seeds) < 3:
        lines.append(
            f"From {len(args.seeds)} seed(s) and a short schedule this cannot show that uncertainty sampling "
            "beats random (or the reverse) in general; rerun with `--seeds 0 1 2` and longer rounds on a GPU."
        )
    command = (
        f".venv/bin/python benchmarks/active_learning.py --rounds {args.rounds} --k {args.k} --pool {args.pool} "
        f"--iterations {args.iterations} --seeds {' '.join(map(str, args.seeds))}"
    )
    text = f"""# Simulated active learning: Lucchi++ mitochondria

Measured {time.strftime("%Y-%m-%d")} with `benchmarks/active_learning.py` on {describe_machine(device)} ({device}).

- Pool: the mitochondria recipe's training region (Lucchi++ z < 128) cut into {n_blocks} blocks of
  {BLOCK[0]}x{BLOCK[1]}x{BLOCK[2]}; per seed, {args.pool} random ones are the candidates a strategy may
  pick from (scoring all {n_blocks} every round would take hours on this CPU).
- Oracle: labels come from the Lucchi++ ground truth. Start: one block with mitochondria, the same
  for every strategy of a seed, and the same randomly initialised network.
- Each round: the strategy picks {args.k} blocks (`epistemic`: MC dropout, 4 passes, mean predictive
  entropy; `tta`: variance over 8 flips; `random`), then {args.iterations} fine-tuning iterations
  (batch 2, the recipe's learning rate {SPEC.recipe.learning_rate} and augmentation) on all labelled
  blocks, warm-started from the last round.
  Blocks are normalised one by one, as the app serves and trains them.
- Validation: held-out crop `lucchi_pp_train.h5` z 133-165, y < 384, x < 512 ({val.labelled_voxels:,} voxels),
  post-processed as served (watershed); never seen by any strategy.

Held-out voxel Dice / foreground IoU after each round (mean over seeds {", ".join(map(str, args.seeds))}):

| strategy | {" | ".join(f"{n} blocks" for n in counts)} | minutes |
|---|{"---|" * len(counts)}---|
{chr(10).join(rows)}

![learning curves]({png.name})

{chr(10).join(f"- {line}" for line in lines)}

Reproduce: `{command}`
"""
    out = args.out / f"active_learning_{name}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
