"""What a person sees of protocol evaluations (``lib.protocol``): panels of raw, label and prediction
(PNG) and metric tables (Markdown), for the model cards, ``lib.evaluate`` and ``benchmarks/quality.py``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .configs.spec import StructureSpec
from .protocol import HEADLINE_METRICS, Evaluation

# One picture of a panel row: the image, its colour map, the colour range (None: the image's own) and its title.
Shown = tuple[np.ndarray, str, float | None, float | None, str]


def plot_panel(path: str, evaluations: list[Evaluation], title: str, slices: int = 3) -> None:
    """Raw, label and prediction side by side on the ``slices`` labelled z-slices of each evaluated region
    that hold the most foreground (unlabelled voxels grey); for an unlabelled check, a thin slab's
    maximum-intensity projections of raw and prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[Evaluation, int | None]] = []
    for e in evaluations:
        if e.mask is None:
            panels.append((e, None))
            continue
        target, mask = e.labelled()
        labelled = [z for z in range(mask.shape[0]) if mask[z].any()]
        # the labelled slices with the most foreground (dense labels: the structure is in view)
        busiest = sorted(labelled, key=lambda z: -int((target[z] & mask[z]).sum()))[:slices]
        panels += [(e, z) for z in sorted(busiest)]
    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3.1 * len(panels) + 0.6), squeeze=False)
    for row, (e, z) in enumerate(panels):
        if z is None:
            fraction = 100 * e.row["foreground_fraction"]
            middle = e.raw.shape[0] // 2
            slab = slice(max(middle - 8, 0), middle + 8)  # a thin slab: a whole-volume MIP saturates
            raw_mip = e.raw[slab].max(0)
            images: list[Shown] = [
                (raw_mip, "gray", None, float(np.percentile(raw_mip, 99.5)), f"z {slab.start}-{slab.stop}: MIP"),
                (e.raw[middle], "gray", None, float(np.percentile(e.raw[middle], 99.5)), f"raw z={middle}"),
                (e.prediction[slab].max(0) > 0, "magma", 0, 1, f"prediction MIP (volume: {fraction:.1f} % marked)"),
            ]
            _draw(axes[row], images)
            continue
        target, mask = e.labelled()
        label = np.where(mask[z], target[z].astype(float), 0.5)
        name = f"{e.row.get('split', '')} {e.row.get('file', '')} z={z}"
        images = [(e.raw[z], "gray", None, None, name), (label, "magma", 0, 1, "label (grey: unlabelled)")]
        images.append((e.prediction[z] > 0, "magma", 0, 1, f"prediction (F1 {e.row['metrics']['f1']:.2f})"))
        _draw(axes[row], images)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _draw(axes, images: list[Shown]) -> None:
    for ax, (image, cmap, vmin, vmax, text) in zip(axes, images):
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(text, fontsize=8)
        ax.axis("off")


def metric_table(spec: StructureSpec, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows ``| split | region | shape | metrics... |`` for report rows of one model."""
    columns = HEADLINE_METRICS.get(spec.name, ("f1", "precision", "recall"))
    lines = ["| split | file: label [z,y,x] | shape | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 3) + "|")
    for r in rows:
        values = " | ".join(_cell(r["metrics"].get(c)) for c in columns)
        where = f"{r['file']}: {r['label']} [{r['region']}]"
        lines.append(f"| {r['split']} | {where} | {'x'.join(map(str, r['shape']))} | {values} |")
    return lines


def leave_one_out_table(spec: StructureSpec, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows ``| microscope | test region | metric in-domain / left out ... |`` from
    ``lib.trainers.report.leave_one_out``; "not run" where a microscope's run is missing."""
    columns = [c for c in HEADLINE_METRICS.get(spec.name, ("f1",)) if c not in ("background_fp_fraction",)][:4]
    lines = ["| microscope | test region | " + " | ".join(f"{c}: in-domain / left out" for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 2) + "|")
    for row in rows:
        left = {(r["file"], r["region"]): r["metrics"] for r in row["left_out"] or []}
        for r in row["in_domain"]:
            other = left.get((r["file"], r["region"]))
            cells = [f"{_cell(r['metrics'].get(c))} / {_cell(other.get(c)) if other else 'not run'}" for c in columns]
            where = f"{r['file']} [{r['region']}]"
            lines.append(f"| {row['microscope']} | {where} | " + " | ".join(cells) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return "nan" if value != value else f"{value:.3f}"
