"""Training artefacts a person reads: history JSON, learning-curve PNG, model card."""

from __future__ import annotations

import json
import os
from typing import IO

import h5py

from ..configs.spec import DataSource, StructureSpec
from ..figures import leave_one_out_table, metric_table
from ..protocol import BACKGROUND_TILE, region_text

# Leave-one-microscope-out runs (``lib.trainers.cli --leave-out``) write their reports here, in the model folder.
LOMO_DIR = "lomo"


def write_history(path: str, history: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump(history, f, indent=1)


_VALIDATION_CURVES = (
    ("f1", "s-", "tab:red", "val F1"),
    ("foreground_iou", "^--", "tab:orange", "val fg IoU"),
    ("accuracy", "s-", "tab:red", "pretext accuracy"),
    ("mse", "^--", "tab:orange", "reconstruction MSE"),
)


def plot_learning_curve(out: str | IO[bytes], history: list[dict], title: str) -> None:
    """Loss per epoch and validation F1 / foreground IoU where measured, as a PNG file or stream.

    Uses a bare ``Figure`` (no pyplot state), so the API can draw one per request from any thread.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(
        epochs,
        [h["loss"] for h in history],
        "o-",
        color="tab:blue",
        label="train loss",
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss", color="tab:blue")
    validated = [h for h in history if h.get("validation")]
    if validated:
        ax2 = ax.twinx()
        ve = [h["epoch"] for h in validated]
        # Segmentation runs validate F1 / IoU; pretext tasks score accuracy or MSE on fixed crops.
        for key, style, color, name in _VALIDATION_CURVES:
            if key in validated[0]["validation"]:
                ax2.plot(ve, [h["validation"][key] for h in validated], style, color=color, label=name)
        if all(0 <= v <= 1 for h in validated for v in h["validation"].values()):
            ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation score", color="tab:red")
        ax2.legend(loc="center right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, format="png")


_LOSS_NAMES = {"bce_dice": "BCE + soft Dice", "focal_dice": "focal + soft Dice"}


def _licences(data_dir: str, files: set[str]) -> list[tuple[str, str, str]]:
    out = []
    for name in sorted(files):
        with h5py.File(os.path.join(data_dir, name), "r") as f:
            out.append(
                (
                    name,
                    str(f.attrs.get("what", "")),
                    str(f.attrs.get("license", "unknown")),
                )
            )
    return out


def write_model_card(
    path: str,
    spec: StructureSpec,
    data_dir: str,
    history: list[dict],
    command: str,
    weights_path: str,
    iterations_per_epoch: int,
    machine: str,
    augmentation: list[str],
    protocol: dict,
    name: str | None = None,
) -> None:
    """Markdown card: data and licences, splits, recipe, test metrics (selection metrics apart), leave one
    microscope out, dense checks, the test panel, machine, reproduce command. ``protocol`` is
    ``lib.protocol.run_protocol``'s report; ``name``: the recipe's (a candidate's differs from ``spec.name``)."""
    name = name or spec.name
    title = f"`{name}`" if name == spec.name else f"`{name}` (a candidate for `{spec.name}`, not served)"
    sections = [
        f"# Model card: {title}\n\n{spec.description}. Output label: `{spec.label_name}` = 1, background = 0.\n",
        _data_section(spec, data_dir),
        _splits_section(spec),
        _recipe_section(spec, history, iterations_per_epoch, augmentation),
        _test_section(spec, protocol, name),
        _leave_one_out_section(spec, protocol, os.path.dirname(os.path.abspath(path)), name),
        _checks_section(spec, protocol),
        _selection_section(spec, history, protocol, machine, weights_path),
        f"## Reproduce\n```\n{command}\n```\n",
    ]
    with open(path, "w") as f:
        f.write("\n".join(sections))


def _data_section(spec: StructureSpec, data_dir: str) -> str:
    recipe = spec.recipe
    files = {s.file for s in recipe.train + recipe.select + recipe.test + recipe.cross}
    files |= {c.file for c in recipe.unlabelled}
    rows = "\n".join(f"| `{n}` | {w} | {lic} |" for n, w, lic in _licences(data_dir, files))
    return f"""## Training data and licences
| file | what | licence |
|---|---|---|
{rows}
"""


def _regions(sources: tuple[DataSource, ...]) -> str:
    if not sources:
        return "- none"
    return "\n".join(f"- `{s.file}` `{s.label}` z,y,x `{region_text(s.region)}`" for s in sources)


def _splits_section(spec: StructureSpec) -> str:
    recipe = spec.recipe
    return f"""## Splits (`lib/protocol.py`)
Train (teaches):
{_regions(recipe.train)}

Select (chooses the epoch, threshold and post-processing; never reported as the result):
{_regions(recipe.select)}

Test (reported only; chose nothing):
{_regions(recipe.test)}

Cross-microscope (reported only):
{_regions(recipe.cross)}

Label mapping (raw value → target; values not listed are neither trained nor scored): `{spec.label_map}`
"""


def _recipe_section(
    spec: StructureSpec, history: list[dict], iterations_per_epoch: int, augmentation: list[str]
) -> str:
    recipe = spec.recipe
    post = f"`{spec.postprocessing}`" + (f" {spec.postprocessing_options}" if spec.postprocessing_options else "")
    resampled = (
        f"; images resampled to {spec.voxel_size_nm} nm (z, y, x) when theirs differs by more than 25 %"
        if spec.voxel_size_nm
        else ""
    )
    warps = "anisotropic: in-plane warps only" if spec.anisotropic else "isotropic: 3D warps, z flips"
    weighted = f", foreground weight {recipe.pos_weight}" if recipe.pos_weight != 1 else ""
    removed = f", components under {spec.min_size} voxels removed" if spec.min_size else ""
    inference = f"Inference: Gaussian-weighted sliding window, overlap {spec.overlap}."
    return f"""## Recipe
- Network: MONAI `DynUNet`, residual blocks, {spec.norm} norm; kernels `{[list(k) for k in spec.kernels]}`,
  strides `{[list(s) for s in spec.strides]}`, filters `{list(spec.filters)}`.
- Input: the image's {spec.percentiles[0]} and {spec.percentiles[1]} percentiles → 0 and 1, clipped to
  [0, {spec.intensity_ceiling:g}], statistics of the whole image{resampled}.
- Patches {list(spec.patch_size)} (z, y, x), {int(recipe.foreground_fraction * 100)} % centred on foreground.
- Augmentation, in order (`lib/trainers/augmentation.py`; {warps}):
  {", ".join(augmentation)}.
- Loss: {_LOSS_NAMES[recipe.loss]} over labelled voxels{weighted}.
  AdamW, lr {recipe.learning_rate}, cosine schedule, {len(history)} epochs × {iterations_per_epoch} iterations
  × batch {recipe.batch_size}, seed {recipe.seed}; validated every {recipe.val_every} epochs on the select split.
- Post-processing: {post}, threshold {spec.threshold}{removed}. {inference}
"""


def _rows_of(protocol: dict, split: str) -> list[dict]:
    return [r for r in protocol["rows"] if r["split"] == split]


def _test_section(spec: StructureSpec, protocol: dict, name: str) -> str:
    pooled = protocol.get("pooled", {}).get("test")
    pooled_line = (
        f"Pooled over the test split: voxel precision {pooled['precision']:.3f}, recall {pooled['recall']:.3f}, "
        f"**F1 {pooled['f1']:.3f}**, foreground IoU {pooled['foreground_iou']:.3f}."
        if pooled
        else ""
    )
    cross = _rows_of(protocol, "cross")
    return f"""## Test metrics
Post-processed prediction, labelled voxels only, no test-time augmentation. `predicted_fraction` /
`labelled_fraction`: the share of labelled voxels marked / labelled {spec.label_name}; `background_fp_fraction`:
share of voxels marked in fully labelled {BACKGROUND_TILE}x{BACKGROUND_TILE} tiles of a slice that hold no
{spec.label_name} (0 is right; nan: no such tile).

{chr(10).join(metric_table(spec, _rows_of(protocol, "test")))}

{pooled_line}

Cross-microscope:

{chr(10).join(metric_table(spec, cross)) if cross else "none"}

Test regions, raw / label / prediction: `{name}.test_panel.png`.
"""


def leave_one_out(spec: StructureSpec, protocol: dict, model_dir: str, name: str | None = None) -> list[dict]:
    """Per microscope of the recipe: its test rows scored by the recipe's model (``protocol``, in-domain) and by
    the run trained without it (``<model_dir>/lomo/<name>-without-<microscope>.protocol.json``; None if that run
    has not been made). ``name``: the recipe's (default ``spec.name``)."""
    rows = []
    for microscope in spec.recipe.microscopes:
        path = os.path.join(model_dir, LOMO_DIR, f"{name or spec.name}-without-{microscope}.protocol.json")
        left_out = None
        if os.path.exists(path):
            with open(path) as f:
                left_out = [r for r in json.load(f)["rows"] if r["split"] == "test"]
        in_domain = [r for r in _rows_of(protocol, "test") if r.get("microscope") == microscope]
        rows.append({"microscope": microscope, "in_domain": in_domain, "left_out": left_out})
    return rows


def _leave_one_out_section(spec: StructureSpec, protocol: dict, model_dir: str, name: str) -> str:
    rows = leave_one_out(spec, protocol, model_dir, name)
    if not rows:
        return ""
    return f"""## Leave one microscope out (the closest measure of a lab's new microscope)
Each row: one microscope's test region, scored by this model (trained with that microscope's train slab) and
by the same recipe trained and selected without any of that microscope's data
(`lib.trainers.cli {name} --leave-out MICROSCOPE`, reports in `{LOMO_DIR}/`).

{chr(10).join(leave_one_out_table(spec, rows))}
"""


def _checks_section(spec: StructureSpec, protocol: dict) -> str:
    checks = (
        "\n".join(
            f"- `{c['file']}` ({'x'.join(map(str, c['shape']))}): **{100 * c['foreground_fraction']:.1f} %** marked "
            f"{spec.label_name}; plausible {100 * c['plausible'][0]:.0f}-{100 * c['plausible'][1]:.0f} % "
            f"({'within' if c['within'] else '**outside**'}) because {c['plausible_because']}."
            for c in protocol.get("unlabelled", [])
        )
        or "- none for this structure (its test volumes are densely labelled: see the background column)"
    )
    return f"## Dense checks on unlabelled volumes\n{checks}\n"


def _selection_section(
    spec: StructureSpec, history: list[dict], protocol: dict, machine: str, weights_path: str
) -> str:
    best = max((h for h in history if h.get("validation")), key=lambda h: h["validation"]["f1"], default=None)
    selection = "not measured"
    if best:
        v = best["validation"]
        selection = (
            f"Best epoch {best['epoch']} of {len(history)} by voxel F1 on the select split: precision "
            f"{v['precision']:.3f}, recall {v['recall']:.3f}, F1 {v['f1']:.3f}, foreground IoU "
            f"{v['foreground_iou']:.3f} ({v['voxels']:,} voxels), with the post-processing of the training run; "
            "the table scores the current one."
        )
    total = history[-1]["total_time"] if history else 0
    return f"""## Selection metrics (chose the epoch; not a result)
{selection}

{chr(10).join(metric_table(spec, _rows_of(protocol, "select")))}

Trained on {machine} ({total / 60:.0f} min). Learning curve:
`{os.path.basename(weights_path).replace(".pt", ".learning_curve.png")}`. Test-time augmentation and seconds
per Mvox: `benchmarks/quality.md`.
"""
