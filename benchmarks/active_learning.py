"""Does the loop pay? A simulated annotator adapts a shipped model to a new microscope, one strategy at a time.

Each adaptation has a pool of regions from the new microscope and a test volume that no strategy, epoch
choice or publish gate ever sees. Every round a strategy picks one unlabelled region of the pool, the
oracle labels it from the ground truth, and the app's own fine-tuning and publish gate
(``lib.trainers.finetune.fine_tune``: a held-out part of the new labels, the recipe's test split within its
tolerance) run on every labelled region, starting from the weights served now. The weights the gate leaves
served are then scored on the test volume.

- ``mitochondria``: the FIB-SEM model (Lucchi++, 5 nm isotropic) to ssTEM (50 nm sections). Pool: regions
  of 10x128x128 sections of ``drosophila_vnc_stack1_xlt512.h5`` (Drosophila L3 VNC, ``mito`` labels);
  test: ``isbi2012_sstem.h5`` z < 10 (an L1 larva). Both are resampled onto the model's grid, as served.
- ``axon``: the TRAILMAP-cube model to ``trailmap_original.h5``. Pool: the four 60x60 quadrants of its
  labelled slices z = 17 and 48 (each region a 32-slice slab around one slice); test: the slab around
  z = 77, which no region touches.

Strategies are the app's own scoring and ranking (``lib.activelearning``): ``random``; ``entropy`` and
``epistemic`` (BALD), both from the same MC-dropout passes; ``diverse`` (BALD-weighted k-center greedy
over encoder features, the labelled regions as centres).

    .venv/bin/python benchmarks/active_learning.py [--adaptations mitochondria axon --rounds 4 --pool 8
        --seeds 0 1 2 --samples 4]

writes ``benchmarks/reports/active_learning_<device>.md``, ``.png`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.activelearning.scoring import encoder_features, mc_dropout_uncertainty  # noqa: E402
from lib.activelearning.strategies import k_center_greedy  # noqa: E402
from lib.configs.registry import MODEL_DIR, SPECS  # noqa: E402
from lib.configs.spec import DataSource, StructureSpec  # noqa: E402
from lib.db.store import file_checksum  # noqa: E402
from lib.infers.predict import Predictor, model_grid_image, model_grid_label  # noqa: E402
from lib.machine import default_device, describe_machine  # noqa: E402
from lib.networks import load_weights  # noqa: E402
from lib.protocol import evaluate_source, voxel_size_nm  # noqa: E402
from lib.trainers.data import TrainingVolume  # noqa: E402
from lib.trainers.finetune import GATE_METRIC, TooFewLabels, fine_tune, original_test_scores  # noqa: E402
from lib.transforms.intensity import intensity_stats  # noqa: E402
from lib.transforms.io import read_volume  # noqa: E402
from lib.transforms.labels import map_labels  # noqa: E402

STRATEGIES = ("random", "entropy", "epistemic", "diverse")


@dataclass(frozen=True)
class Adaptation:
    model: str
    microscope: str
    file: str
    label: str
    regions: tuple[tuple[slice, slice, slice], ...]  # the pool, in the file's voxels
    test: DataSource
    metric: str  # what the curve shows

    @property
    def spec(self) -> StructureSpec:
        return SPECS[self.model]


def _grid(shape, size) -> tuple[tuple[slice, slice, slice], ...]:
    return tuple(
        (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
        for z in range(0, shape[0] - size[0] + 1, size[0])
        for y in range(0, shape[1] - size[1] + 1, size[1])
        for x in range(0, shape[2] - size[2] + 1, size[2])
    )


ADAPTATIONS = {
    "mitochondria": Adaptation(
        "mitochondria",
        "ssTEM, Drosophila VNC, 50 x 4-4.6 nm",
        "drosophila_vnc_stack1_xlt512.h5",
        "labels/mito",
        _grid((20, 1024, 512), (10, 128, 128)),
        DataSource("isbi2012_sstem.h5", "labels/mito", region=((0, 10), (None, None), (None, None))),
        "foreground_iou",
    ),
    "axon": Adaptation(
        "axon",
        "light-sheet, another TRAILMAP volume",
        "trailmap_original.h5",
        "labels/sparse",
        tuple(
            (slice(z - 16, z + 16), slice(y, y + 60), slice(x, x + 60))
            for z in (17, 48)
            for y in (0, 60)
            for x in (0, 60)
        ),
        DataSource("trailmap_original.h5", "labels/sparse", region=((61, 93), (None, None), (None, None))),
        "f1",
    ),
}


class Pool:
    """An adaptation's regions as the app trains them (model grid, normalised by the whole image) and raw."""

    def __init__(self, adaptation: Adaptation, data_dir: Path):
        spec = adaptation.spec
        path = str(data_dir / adaptation.file)
        image = read_volume(path, "raw")
        label = read_volume(path, adaptation.label).array
        self.stats = intensity_stats(image.array)
        self.voxel_size_nm = voxel_size_nm(image)
        self.raw, self.volumes = [], []
        for i, region in enumerate(adaptation.regions):
            raw = np.ascontiguousarray(image.array[region])
            grid = model_grid_image(raw, spec, self.stats, self.voxel_size_nm)
            target, mask = map_labels(label[region], spec.label_map)
            name = f"{adaptation.file} region {i} " + ",".join(f"{s.start}:{s.stop}" for s in region)
            self.raw.append(raw)
            self.volumes.append(
                TrainingVolume(
                    name, grid, model_grid_label(target, grid.shape), model_grid_label(mask, grid.shape).astype(bool)
                )
            )


class Cache:
    """Figures that depend only on a weights file (by checksum): the test score, the original test F1,
    each region's uncertainty and features."""

    def __init__(self):
        self.values: dict[tuple, object] = {}

    def get(self, key: tuple, compute):
        if key not in self.values:
            self.values[key] = compute()
        return self.values[key]


def score_on_test(adaptation: Adaptation, weights: str, data_dir: Path, cache: Cache, device: str) -> dict:
    def compute():
        network, _ = load_weights(weights, device)
        row = evaluate_source(adaptation.spec, network, str(data_dir), adaptation.test, "test", device=device).row
        return {k: row["metrics"][k] for k in ("f1", "foreground_iou", "precision", "recall", "predicted_fraction")}

    return cache.get(("test", adaptation.model, file_checksum(weights)), compute)


def uncertainty(adaptation: Adaptation, pool: Pool, i: int, weights: str, args, cache: Cache, device: str) -> dict:
    def compute():
        network, _ = load_weights(weights, device)
        spec, raw = adaptation.spec, pool.raw[i]
        predictor = Predictor(network, spec, device, pool.stats, pool.voxel_size_nm)
        scores = mc_dropout_uncertainty(predictor, raw, args.samples)
        features = encoder_features(predictor, raw)
        return {**scores, "features": np.asarray(features)}

    return cache.get(("uncertainty", adaptation.model, file_checksum(weights), i, args.samples), compute)


def pick(strategy, adaptation, pool, candidates, labelled, weights, args, cache, rng, device) -> int:
    """The next region of ``candidates`` by ``strategy`` under the served ``weights``."""
    if strategy == "random":
        return int(rng.choice(candidates))
    scored = {i: uncertainty(adaptation, pool, i, weights, args, cache, device) for i in candidates + labelled}
    if strategy in ("entropy", "epistemic"):
        return max(candidates, key=lambda i: (scored[i][strategy], -i))
    names = [str(i) for i in candidates]
    features = {str(i): scored[i]["features"] for i in candidates}
    centres = [scored[i]["features"] for i in labelled]
    bald = {str(i): scored[i]["epistemic"] for i in candidates}
    return int(k_center_greedy(names, bald, features, centres, 1)[0])


def run(adaptation, pool, strategy, seed, candidates, args, data_dir, cache, workdir, device) -> list[dict]:
    """One learning curve: the served weights' test scores after 0, 1, ... labelled regions."""
    spec = adaptation.spec
    rng = np.random.default_rng(1000 + seed)
    served = str(workdir / f"{adaptation.model}-{strategy}-{seed}-served.pt")
    shutil.copyfile(Path(MODEL_DIR) / f"{adaptation.model}.pt", served)
    candidate = str(workdir / f"{adaptation.model}-{strategy}-{seed}-candidate.pt")

    def original_of(weights: str) -> float | None:
        def compute():
            network, _ = load_weights(weights, device)
            scores = original_test_scores(spec, network, str(data_dir), device)
            return scores[GATE_METRIC] if scores else None

        return cache.get(("original", adaptation.model, file_checksum(weights)), compute)

    labelled: list[int] = []
    left = list(candidates)
    curve = [{"labelled": 0, "published": None, **score_on_test(adaptation, served, data_dir, cache, device)}]
    started = time.time()
    for round_ in range(1, args.rounds + 1):
        choice = pick(strategy, adaptation, pool, left, labelled, served, args, cache, rng, device)
        labelled.append(choice)
        left.remove(choice)
        try:
            result = fine_tune(
                spec,
                [pool.volumes[i] for i in labelled],
                served,
                candidate,
                original_baseline=lambda: original_of(served),
                data_dir=str(data_dir),
                seed=seed * 100 + round_,
                device=device,
            )
        except TooFewLabels as e:  # the app's trigger waits for more labels
            point = {"labelled": len(labelled), "region": choice, "published": None, "waiting": str(e)}
            point.update(score_on_test(adaptation, served, data_dir, cache, device))
            curve.append(point)
            continue
        gate = result.gate
        point = {"labelled": len(labelled), "region": choice, "published": gate.publish, "gate": gate.to_dict()}
        if gate.publish:
            shutil.copyfile(candidate, served)
            cache.values[("original", adaptation.model, file_checksum(served))] = gate.original_score
        else:  # what the gate turned down, for the report
            point["rejected"] = score_on_test(adaptation, candidate, data_dir, cache, device)
        point.update(score_on_test(adaptation, served, data_dir, cache, device))
        point["iterations"] = result.iterations
        point["minutes"] = (time.time() - started) / 60
        curve.append(point)
        shown = {k: point[k] for k in ("labelled", "region", "published", adaptation.metric, "minutes")}
        print(json.dumps({"model": adaptation.model, "strategy": strategy, "seed": seed, **shown}), flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--adaptations", nargs="+", default=list(ADAPTATIONS), choices=list(ADAPTATIONS))
    parser.add_argument("--rounds", type=int, default=4, help="regions labelled one by one")
    parser.add_argument("--pool", type=int, default=8, help="candidate regions per seed (all for a small pool)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=4, help="MC-dropout passes per region")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    args = parser.parse_args()
    device = default_device()
    workdir = args.out / "active_learning_work"
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Cache()
    results = _load(args, device)  # adaptations run before with this device are kept beside the new ones
    for name in args.adaptations:
        started = time.time()
        adaptation = ADAPTATIONS[name]
        pool = Pool(adaptation, args.data_dir)
        schedule = {k: getattr(args, k) for k in ("rounds", "pool", "seeds", "samples")}
        entry = results["adaptations"][name] = {"schedule": schedule, "curves": {s: [] for s in args.strategies}}
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            # Every strategy of a seed draws from the same candidates; regions with no foreground stay in.
            size = min(args.pool, len(adaptation.regions))
            candidates = sorted(int(i) for i in rng.choice(len(adaptation.regions), size=size, replace=False))
            for strategy in args.strategies:
                entry["curves"][strategy].append(
                    run(adaptation, pool, strategy, seed, candidates, args, args.data_dir, cache, workdir, device)
                )
                entry["minutes"] = (time.time() - started) / 60
                _write_json(args, results, device)
    shutil.rmtree(workdir, ignore_errors=True)
    write_report(args, results, device)


def _load(args, device: str) -> dict:
    path = args.out / f"active_learning_{_name(device)}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "curves" in results:  # written by a run still in progress when the format was settled
        old = results.pop("curves")
        schedule = {k: results.get("args", {}).get(k) for k in ("rounds", "pool", "seeds", "samples")}
        results["adaptations"] = {name: {"schedule": schedule, "curves": curves} for name, curves in old.items()}
    results.update({"device": device, "machine": describe_machine(device)})
    results.setdefault("adaptations", {})
    return results


def _name(device: str) -> str:
    return "gpu" if device.startswith("cuda") else "cpu"


def _write_json(args, results: dict, device: str) -> None:
    path = args.out / f"active_learning_{_name(device)}.json"
    path.write_text(json.dumps(results, indent=1, default=float))


def _matrix(runs: list[list[dict]], metric: str) -> np.ndarray:
    return np.array([[point[metric] for point in curve] for curve in runs])


def write_report(args, results: dict, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = args.out / f"active_learning_{_name(device)}.png"
    names = [name for name in ADAPTATIONS if name in results["adaptations"]]
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.0, 4.8 * len(names)), 4.0), dpi=100, squeeze=False)
    sections = []
    for ax, name in zip(axes[0], names):
        adaptation, entry = ADAPTATIONS[name], results["adaptations"][name]
        curves, schedule = {s: r for s, r in entry["curves"].items() if r}, entry["schedule"]
        metric = adaptation.metric
        counts = [p["labelled"] for p in next(iter(curves.values()))[0]]
        for strategy, runs in curves.items():
            values = _matrix(runs, metric)
            ax.errorbar(counts, values.mean(0), yerr=values.std(0), fmt="o-", capsize=3, label=strategy)
        ax.set_xticks(counts)
        ax.set_xlabel("labelled regions")
        ax.set_ylabel(f"test {metric.replace('_', ' ')}")
        ax.set_title(f"{name} → {adaptation.microscope}\n{len(schedule['seeds'])} seeds, mean ± sd", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        sections.append(_section(adaptation, {**entry, "curves": curves}, counts))
    fig.suptitle("Served weights on a new microscope's test volume, by labelled regions", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    text = f"""# Does the loop pay? Adapting shipped models to a new microscope

Measured {time.strftime("%Y-%m-%d")} with `benchmarks/active_learning.py` on {results["machine"]} ({device}).

{__doc__.split(chr(10) + chr(10), 1)[1].split("    .venv")[0].strip()}

Each round's fine-tuning is the app's recipe (iterations from the labelled voxels, the structure's
augmentation and replay share, a held-out slab of each region until there are 3 regions, then every 4th
whole region), and its gate decides what is served next round.

![learning curves]({png.name})

{chr(10).join(sections)}
Caveats that hold for any run of this script:
- The axon model's own test split includes all of `trailmap_original.h5`, so for the axon adaptation the
  gate's "original" check also sees the slices the pool labels; its test slab (z = 77) is still apart.
- A CPU schedule (few rounds, small pools, 2-4 dropout passes) shows the first labelled regions only; the
  goal of +0.3 after 4 regions needs the GPU schedule (`--rounds 6 --pool 16 --samples 8`).
"""
    (args.out / f"active_learning_{_name(device)}.md").write_text(text)


def _section(adaptation: Adaptation, entry: dict, counts: list[int]) -> str:
    curves, schedule = entry["curves"], entry["schedule"]
    metric = adaptation.metric
    rows = []
    for strategy, runs in curves.items():
        values = _matrix(runs, metric)
        cells = " | ".join(f"{values[:, r].mean():.3f} ± {values[:, r].std():.3f}" for r in range(len(counts)))
        published = sum(bool(p["published"]) for curve in runs for p in curve[1:])
        rounds = sum(len(curve) - 1 for curve in runs)
        rows.append(f"| {strategy} | {cells} | {published}/{rounds} |")
    start = _matrix(next(iter(curves.values())), metric)[:, 0].mean()
    final = {s: _matrix(runs, metric)[:, -1] for s, runs in curves.items()}
    best = max(final, key=lambda s: final[s].mean())
    gain = final[best].mean() - start
    lines = [
        f"- After {counts[-1]} labelled regions the best strategy (`{best}`) serves {metric} "
        f"{final[best].mean():.3f}, {gain:+.3f} over the shipped model's {start:.3f} (goal: +0.3): "
        + ("met." if gain >= 0.3 else "not met."),
    ]
    if "random" in final:
        for s in (s for s in final if s != "random"):
            gap = final[s] - final["random"]
            lines.append(
                f"- `{s}` − `random` at {counts[-1]} regions: {gap.mean():+.3f} (sd over seeds {gap.std():.3f})."
            )
    rejected = [p for runs in curves.values() for curve in runs for p in curve[1:] if p["published"] is False]
    waiting = sum(p["published"] is None for runs in curves.values() for curve in runs for p in curve[1:])
    if waiting:
        lines.append(f"- {waiting} rounds had too few labelled voxels to hold a part out: no run, as in the app.")
    if rejected:
        held_out = sum(p["gate"]["new_score"] <= p["gate"]["new_baseline"] for p in rejected)
        lines.append(
            f"- The gate kept the served weights {len(rejected)} times ({held_out} for no gain on the held-out "
            f"new labels, {len(rejected) - held_out} for the original test split); the candidates it turned "
            f"down scored {np.mean([p['rejected'][metric] for p in rejected]):.3f} {metric} on the test volume "
            "on average."
        )
    header = " | ".join(f"{n} regions" for n in counts)
    minutes = entry.get("minutes") or sum(curve[-1].get("minutes", 0) for runs in curves.values() for curve in runs)
    seeds = " ".join(map(str, schedule["seeds"]))
    command = (
        f".venv/bin/python benchmarks/active_learning.py --adaptations {adaptation.model} "
        f"--rounds {schedule['rounds']} --pool {schedule['pool']} --seeds {seeds} --samples {schedule['samples']}"
    )
    return f"""## {adaptation.model} → {adaptation.microscope}

Schedule: {schedule["rounds"]} rounds of one region; {schedule["pool"]} candidate regions per seed (the same
for every strategy of a seed); seeds {seeds}; {schedule["samples"]} MC-dropout passes per region;
{minutes:.0f} minutes. Reproduce: `{command}`

Test: `{adaptation.test.file}` region {adaptation.test.region}; {metric} of the served weights
(mean ± sd over seeds); last column: rounds whose candidate the gate published.

| strategy | {header} | published |
|---|{"---|" * len(counts)}---|
{chr(10).join(rows)}

{chr(10).join(lines)}
"""


if __name__ == "__main__":
    main()
