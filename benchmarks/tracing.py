"""Neurite tracing (``postprocessing=trace``) against two baselines on dense neuron ground truth, two cases.

- ``FIB-SEM gala``: ``gala_fibsem_train.h5`` (isotropic ~10 nm FIB-SEM of the Drosophila brain, 50 x 100 x 200,
  its ``labels/neurons`` ids; BSD-style licence), the membrane recipe's x slabs: x 70-100 **select** (chooses
  every threshold and option, by lowest VOI), x 100-200 **test** (reports only). Also traced on every 5th
  section (50 nm z, 10 nm pixels), as ssTEM.
- ``ssTEM Cardona L1``: ``trakem2_sstem_cardona.h5`` (the ISBI 2012 sections, 50 x 4 x 4 nm, with TrakEM2's 3D
  neuron ids; seed 003's thick-section case), the recipe's y slabs: y 320-384 select, y 384-512 test.

Two membrane maps are traced in each:

- ``model``: the membrane model's probabilities (``--recipe``: the served ``membrane``, or the candidate
  ``membrane-em`` trained on ssTEM and FIB-SEM; neither recipe trained on either test region);
- ``truth``: the true boundary map (id 0), smoothed (Gaussian sigma 1): what tracing does with a perfect
  membrane predictor, apart from the membrane prediction's errors.

Methods, in the same run: 3D connected components of the thresholded non-membrane region;
per-section watershed without linking; ``trace`` with ``mode=sections`` (Hungarian linking) and
``mode=3d``; ``trace`` with anchors from the truth every N sections (one 3 x 3 dot per neurite, at its
deepest pixel, as an annotator's click). Writes ``benchmarks/tracing.png`` (gala) and, under
``benchmarks/reports/``, ``tracing_cpu.json`` and ``tracing_table.md`` (the table ``benchmarks/tracing.md``
discusses); with a candidate's ``--recipe``, the same names with ``_<recipe>`` after ``tracing``:

    .venv/bin/python benchmarks/tracing.py [--data-dir ../shared/data] [--recipe membrane-em]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.configs.registry import CANDIDATE_DIR, MODEL_DIR, RECIPES, SPECS  # noqa: E402
from lib.infers.predict import Predictor  # noqa: E402
from lib.infers.tracing import link_sections, name_tracks, section_segments, trace  # noqa: E402
from lib.machine import describe_machine  # noqa: E402
from lib.metrics import segmentation_scores  # noqa: E402
from lib.networks import load_weights  # noqa: E402
from lib.transforms.intensity import intensity_stats  # noqa: E402
from lib.transforms.io import read_volume  # noqa: E402


@dataclass(frozen=True)
class Case:
    """A volume with dense neuron ids, its voxel size, and the select and test regions of its membrane recipe
    (the membrane model never trained or selected its epoch on the test region)."""

    name: str
    file: str
    voxel_nm: tuple[float, float, float]
    select: tuple[slice, ...]
    test: tuple[slice, ...]
    anchor_every: tuple[int, ...]
    ssTEM_like: bool = False  # also traced on every SSTEM_STEP-th section


CASES = (
    # gala: the membrane recipe's x slabs (train 0-70, select 70-100, test 100-200).
    Case("FIB-SEM gala", "gala_fibsem_train.h5", (10.0, 10.0, 10.0), np.s_[:, :, 70:100], np.s_[:, :, 100:],
         (25, 10, 5), ssTEM_like=True),
    # The ISBI 2012 sections with TrakEM2's 3D neuron ids (50 nm sections, seed 003's case): the recipe's y slabs.
    Case("ssTEM Cardona L1", "trakem2_sstem_cardona.h5", (50.0, 4.0, 4.0), np.s_[:, 320:384, :],
         np.s_[:, 384:512, :], (5, 2)),
)  # fmt: skip
_SEEDS = {"threshold": (0.3, 0.5, 0.7), "min_distance": (4, 8), "sigma": (1.0, 2.0)}
GRID = {  # options chosen on the select split
    "components": {"threshold": (0.3, 0.5, 0.7)},
    "unlinked": _SEEDS,
    "hungarian only": {**_SEEDS, "max_cost": (0.6, 0.8)},
    "sections": {**_SEEDS, "max_cost": (0.6, 0.8), "join_cover": (0.85, 0.95)},
    "3d": {"threshold": (0.3, 0.5, 0.7), "sigma": (1.0, 2.0), "h": (1.0, 2.0, 3.0)},
}
SSTEM_STEP = 5  # every 5th 10 nm section: 50 nm, as ssTEM
ANCHOR_EVERY_SSTEM = (5, 2)


def components(p: np.ndarray, spacing, anchors=None, threshold: float = 0.5) -> np.ndarray:
    """Baseline: 6-connected 3D components of ``p < threshold``."""
    return ndimage.label(p < threshold)[0]


def unlinked(p: np.ndarray, spacing, anchors=None, **seeds) -> np.ndarray:
    """Baseline: each section's watershed segments as objects of their own (no linking)."""
    out = np.zeros(p.shape, np.int64)
    offset = 0
    for z, section in enumerate(p):
        segments = section_segments(section, **seeds)
        out[z] = np.where(segments > 0, segments + offset, 0)
        offset += int(segments.max())
    return out


def hungarian_only(p: np.ndarray, spacing, anchors=None, max_cost: float = 0.6, **seeds) -> np.ndarray:
    """``trace`` without the fragment joins: one-to-one links only."""
    segments = np.stack([section_segments(section, **seeds) for section in p])
    links = link_sections(segments, spacing, 1.0, max_cost)
    links = [replace(s, join_a=s.join_a[:0], join_b=s.join_b[:0]) for s in links]
    return name_tracks(segments, links, anchors)


def traced(mode: str):
    def run(p: np.ndarray, spacing, anchors=None, **options) -> np.ndarray:
        return trace(p, mode=mode, voxel_size_nm=spacing, anchors=anchors, **options)

    return run


METHODS = {
    "components": components,
    "unlinked": unlinked,
    "hungarian only": hungarian_only,
    "sections": traced("sections"),
    "3d": traced("3d"),
}


def anchors_every(truth: np.ndarray, every: int) -> np.ndarray:
    """One 3 x 3 dot per true neurite on every ``every``-th section, at its deepest pixel there."""
    anchors = np.zeros(truth.shape, np.uint32)
    for z in range(0, len(truth), every):
        ids = np.unique(truth[z][truth[z] > 0])
        if not len(ids):
            continue
        depth = ndimage.distance_transform_edt(_inner(truth[z]))  # to the nearest other id or boundary
        for i, (y, x) in zip(ids, ndimage.maximum_position(depth, truth[z], ids)):
            anchors[z, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = np.where(
                truth[z, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] == i, i, 0
            )
    return anchors


def _inner(section: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours share their id (the distance to another id or the edge is then > 0)."""
    same = np.ones(section.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            same &= np.roll(section, shift, axis) == section
    return same & (section > 0)


def score(method: str, p: np.ndarray, truth: np.ndarray, spacing, anchors=None, **options) -> dict:
    started = time.perf_counter()
    prediction = METHODS[method](p, spacing, anchors, **options)
    seconds = time.perf_counter() - started
    return {**segmentation_scores(prediction, truth), "seconds": round(seconds, 2), "prediction": prediction}


def choose(method: str, p: np.ndarray, truth: np.ndarray, spacing) -> dict:
    """The options of ``method`` with the lowest VOI on the select split."""
    grid = GRID[method]
    best = None
    for values in itertools.product(*grid.values()):
        options = dict(zip(grid, values))
        voi = score(method, p, truth, spacing, **options)["voi"]
        if best is None or voi < best[0]:
            best = (voi, options)
    return best[1]


def evaluate(
    name: str, p: np.ndarray, truth: np.ndarray, case: Case, spacing, anchor_every, step: int = 1
) -> list[dict]:
    """Every method on ``case``'s test region, with options chosen on its select region (every ``step``-th
    section of both)."""
    rows = []
    select, test = case.select, case.test
    thin = (slice(None, None, step), slice(None), slice(None))

    def part(volume: np.ndarray, region: tuple[slice, ...]) -> np.ndarray:
        return volume[region][thin]

    for method in METHODS:
        options = choose(method, part(p, select), part(truth, select), spacing)
        result = score(method, part(p, test), part(truth, test), spacing, **options)
        rows.append({"case": name, "method": method, "anchors_every": None, "options": options, **result})
        print(f"{name} {method} {options}: VOI {result['voi']:.3f} ARE {result['adapted_rand_error']:.3f}", flush=True)
    options = next(r["options"] for r in rows if r["method"] == "sections")  # as chosen without anchors
    for every in anchor_every:
        anchors = anchors_every(part(truth, test), every)
        result = score("sections", part(p, test), part(truth, test), spacing, anchors=anchors, **options)
        rows.append({"case": name, "method": "sections", "anchors_every": every, "options": options, **result})
        print(f"{name} anchors every {every}: VOI {result['voi']:.3f}", flush=True)
    return rows


def membrane_maps(data_dir: Path, case: Case, recipe: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The case's neuron ids and its membrane maps: raw, the ``recipe``'s probabilities, smoothed truth."""
    path = data_dir / case.file
    raw = read_volume(str(path), "raw").array
    truth = read_volume(str(path), "labels/neurons").array.astype(np.int64)
    spec = RECIPES[recipe]
    network, _ = load_weights(str(Path(MODEL_DIR if recipe in SPECS else CANDIDATE_DIR) / f"{recipe}.pt"), "cpu")
    model = Predictor(network, spec, "cpu", intensity_stats(raw), case.voxel_nm).probabilities(raw)
    oracle = ndimage.gaussian_filter((truth == 0).astype(np.float32), 1.0)
    oracle /= max(float(oracle.max()), 1e-6)
    return truth, {"raw": raw, "model": model, "truth": oracle}


def picture(path: Path, raw: np.ndarray, truth: np.ndarray, rows: list[dict], sections=(5, 25, 45)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["case"] == "FIB-SEM gala, model membrane" and r["anchors_every"] in (None, 10)]
    columns = [("raw", raw), ("truth", truth)] + [
        (f"{r['method']}" + (f" + anchors/{r['anchors_every']}" if r["anchors_every"] else ""), r["prediction"])
        for r in shown
    ]
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, (1 << 16, 3))
    colours[0] = 0
    fig, axes = plt.subplots(len(sections), len(columns), figsize=(2.2 * len(columns), 1.35 * len(sections) + 0.6))
    for row, z in enumerate(sections):
        for col, (title, volume) in enumerate(columns):
            ax = axes[row, col]
            if title == "raw":
                ax.imshow(volume[z], cmap="gray")
            else:
                ax.imshow(colours[volume[z].astype(np.int64) % len(colours)])
            ax.set_title(f"{title} z={z}" if row == 0 else f"z={z}", fontsize=7)
            ax.axis("off")
    title = "gala FIB-SEM test half (x 100-200): one colour per id; a track keeps its colour through z"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| case | method | anchors every | options (chosen on select) | VOI split | VOI merge | VOI"
        " | adapted Rand error | objects (truth) | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['method']} | {r['anchors_every'] or '-'} | {r['options']} | {r['voi_split']:.3f} |"
            f" {r['voi_merge']:.3f} | {r['voi']:.3f} | {r['adapted_rand_error']:.3f} |"
            f" {r['predicted_objects']} ({r['true_objects']}) | {r['seconds']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--recipe", default="membrane", help="the membrane model: served, or a candidate's")
    args = parser.parse_args()
    started = time.time()
    suffix = "" if args.recipe == "membrane" else f"_{args.recipe}"  # a candidate's figures beside the served one's
    rows = []
    for case in CASES:
        truth, maps = membrane_maps(args.data_dir, case, args.recipe)
        for source in ("model", "truth"):
            p = maps[source]
            rows += evaluate(f"{case.name}, {source} membrane", p, truth, case, case.voxel_nm, case.anchor_every)
            if case.ssTEM_like:
                sstem = (case.voxel_nm[0] * SSTEM_STEP, *case.voxel_nm[1:])
                rows += evaluate(
                    f"{case.name} every {SSTEM_STEP}th section (ssTEM-like), {source} membrane",
                    p, truth, case, sstem, ANCHOR_EVERY_SSTEM, step=SSTEM_STEP,
                )  # fmt: skip
        if case is CASES[0]:
            picture(args.out / f"tracing{suffix}.png", maps["raw"][case.test], truth[case.test], rows)
    for r in rows:
        r.pop("prediction")
    machine = describe_machine("cpu")
    splits = {c.name: {"select": str(c.select), "test": str(c.test)} for c in CASES}
    report = {"membrane": args.recipe, "files": [c.file for c in CASES], "splits": splits, "machine": machine,
              "rows": rows}  # fmt: skip
    (args.out / "reports" / f"tracing{suffix}_cpu.json").write_text(json.dumps(report, indent=2))
    (args.out / "reports" / f"tracing{suffix}_table.md").write_text("\n".join(table(rows)) + "\n")
    print(f"done in {time.time() - started:.0f} s on {machine}")


if __name__ == "__main__":
    main()
