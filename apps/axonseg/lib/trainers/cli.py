"""Train a structure's shipped weights from its recipe on the shared data, then judge them.

    PYTHONPATH=apps/axonseg python -m lib.trainers.cli mitochondria --data-dir ../shared/data

Writes ``<model-dir>/<name>.pt`` plus history JSON, learning-curve PNG, the protocol report
(``<name>.protocol.json``: select, test and cross-microscope rows, unlabelled checks; ``lib.protocol``),
the test panel PNG and the model card. ``--evaluate-only`` re-runs the protocol on the weights there.
``--leave-out MICROSCOPE`` trains without one microscope and tests on it (``<model-dir>/lomo/``): the card
of the shipped model reports those figures beside its in-domain ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..configs.registry import CANDIDATE_DIR, MODEL_DIR, RECIPES, SPECS
from ..configs.spec import StructureSpec
from ..figures import plot_panel
from ..machine import default_device, describe_machine
from ..networks import load_weights
from ..protocol import run_protocol
from .augmentation import describe, recipe_augmentation
from .data import TrainingVolume, load_source
from .report import LOMO_DIR, plot_learning_curve, write_history, write_model_card
from .supervised import EpochStats, TrainingPlan, train_segmentation


@dataclass(frozen=True)
class Outputs:
    """The files one model's run writes into the model folder."""

    model_dir: str
    name: str

    def path(self, suffix: str) -> str:
        return os.path.join(self.model_dir, f"{self.name}{suffix}")

    @property
    def weights(self) -> str:
        return self.path(".pt")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = RECIPES[args.model]
    model_dir = args.model_dir or (MODEL_DIR if args.model in SPECS else CANDIDATE_DIR)
    outputs = Outputs(model_dir, args.model)
    if args.leave_out:  # a new lab's microscope: trained without it, tested on it alone, never shipped
        spec = replace(spec, recipe=spec.recipe.leave_out(args.leave_out))
        outputs = Outputs(os.path.join(model_dir, LOMO_DIR), f"{args.model}-without-{args.leave_out}")
    iterations = args.iterations or spec.recipe.iterations_per_epoch
    transforms, artifacts = recipe_augmentation(spec, args.data_dir)
    augmentation = describe(transforms, spec, artifacts)
    if args.card_only or args.evaluate_only:
        _, meta = load_weights(outputs.weights)
        protocol = _judge(args, spec, outputs) if args.evaluate_only else _read_json(outputs.path(".protocol.json"))
        history = _read_json(outputs.path(".history.json"))
        machine = meta.get("machine") or describe_machine(args.device)
        _write_reports(args, spec, outputs, history, meta["command"], machine, iterations, augmentation, protocol)
        return
    train = [load_source(args.data_dir, s, spec) for s in spec.recipe.train]
    val = [load_source(args.data_dir, s, spec) for s in spec.recipe.select]
    print(
        f"{spec.name}: {len(train)} training volumes, {len(val)} validation volumes, "
        f"{len(artifacts)} artifact cubes; augmentation: {', '.join(augmentation)}",
        flush=True,
    )
    os.makedirs(outputs.model_dir, exist_ok=True)
    machine = describe_machine(args.device)
    command = "PYTHONPATH=apps/axonseg .venv/bin/python -m lib.trainers.cli " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    plan = TrainingPlan(
        epochs=args.epochs or spec.recipe.epochs,
        iterations_per_epoch=iterations,
        batch_size=spec.recipe.batch_size,
        learning_rate=spec.recipe.learning_rate,
        foreground_fraction=spec.recipe.foreground_fraction,
        seed=spec.recipe.seed,
        val_every=args.val_every or spec.recipe.val_every,
        pretrained_encoder=args.pretrained_encoder,
        freeze_encoder_epochs=args.freeze_encoder_epochs,
        transforms=transforms,
        device=args.device,
        meta={
            "name": spec.name,
            "recipe": "reference",
            "command": command,
            "machine": machine,
            "pretrained_encoder": args.pretrained_encoder,
            "left_out": args.leave_out,
        },
        checkpoint=outputs.path(".resume.pt") if args.resume else None,
    )
    history = _train(spec, train, val, outputs, plan)
    protocol = _judge(args, spec, outputs)
    _write_reports(args, spec, outputs, history, command, machine, iterations, augmentation, protocol)
    print(json.dumps({"pooled": protocol["pooled"], "unlabelled": protocol["unlabelled"]}, indent=1))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(RECIPES), help="a served model, or a candidate recipe")
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--model-dir", help="default: apps/axonseg/model, or its candidates/ for a candidate")
    parser.add_argument("--epochs", type=int, help="override the recipe")
    parser.add_argument("--iterations", type=int, help="iterations per epoch; overrides the recipe")
    parser.add_argument("--val-every", type=int, help="epochs between validations; overrides the recipe")
    parser.add_argument("--pretrained-encoder", help="start from this ssl_pretrain encoder file with a fresh decoder")
    parser.add_argument("--freeze-encoder-epochs", type=int, default=0, help="keep that encoder fixed this long")
    parser.add_argument("--leave-out", metavar="MICROSCOPE", help="train without this microscope, test on it alone")
    parser.add_argument(
        "--resume", action="store_true", help="keep the training state in <name>.resume.pt after every epoch, and "
        "go on from it if it is there (a run continued in a later session or on a GPU)"
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--card-only", action="store_true", help="re-render the model card and plot from the saved history"
    )
    parser.add_argument(
        "--evaluate-only", action="store_true", help="run the protocol on the weights there, then write the card"
    )
    return parser


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _train(
    spec: StructureSpec, train: list[TrainingVolume], val: list[TrainingVolume], outputs: Outputs, plan: TrainingPlan
) -> list[dict]:
    """The recipe's run, printing each epoch; its history."""
    history: list[dict] = []

    def on_epoch(stats: EpochStats) -> None:
        history.append(stats.to_dict())
        val_text = f" val F1 {stats.validation['f1']:.3f}" if stats.validation else ""
        print(
            f"epoch {stats.epoch}/{stats.total_epochs} loss {stats.loss:.4f}{val_text} ({stats.seconds:.0f} s)",
            flush=True,
        )

    train_segmentation(spec, train, val, outputs.weights, plan, on_epoch=on_epoch)
    size_mb = os.path.getsize(outputs.weights) / 1e6
    print(f"wrote {outputs.weights} ({size_mb:.1f} MB); judging it on the test split", flush=True)
    return history


def _judge(args: argparse.Namespace, spec: StructureSpec, outputs: Outputs) -> dict:
    """The protocol on the weights in the model folder: report JSON and the test panel PNG."""
    network, _ = load_weights(outputs.weights, args.device)
    report, evaluations = run_protocol(spec, network, args.data_dir, device=args.device)
    report["machine"] = describe_machine(args.device)
    with open(outputs.path(".protocol.json"), "w") as f:
        json.dump(report, f, indent=1)
    shown = [e for e in evaluations if e.row["split"] in ("test", "cross", "unlabelled")]
    pooled = report["pooled"].get("test", {})
    plot_panel(
        outputs.path(".test_panel.png"),
        shown,
        f"{outputs.name}: test and cross-microscope regions (pooled test F1 {pooled.get('f1', float('nan')):.3f})",
        slices=2,
    )
    return report


def _write_reports(
    args: argparse.Namespace,
    spec: StructureSpec,
    outputs: Outputs,
    history: list[dict],
    command: str,
    machine: str,
    iterations: int,
    augmentation: list[str],
    protocol: dict,
) -> None:
    """History JSON, learning curve PNG and model card (none for a leave-one-out run: the shipped model's card
    reports its figures, from LOMO_DIR)."""
    write_history(outputs.path(".history.json"), history)
    plot_learning_curve(outputs.path(".learning_curve.png"), history, f"{outputs.name}: training on {args.device}")
    if args.leave_out:
        return
    write_model_card(
        outputs.path(".md"), spec, args.data_dir, history, command, outputs.weights, iterations, machine,
        augmentation, protocol, name=outputs.name,
    )  # fmt: skip


if __name__ == "__main__":
    main()
