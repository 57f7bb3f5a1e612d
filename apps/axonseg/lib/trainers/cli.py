"""Train a structure's shipped weights from its recipe on the shared data, then judge them.

    PYTHONPATH=apps/axonseg python -m lib.trainers.cli mitochondria --data-dir ../shared/data

Writes ``<model-dir>/<name>.pt`` plus history JSON, learning-curve PNG, the protocol report
(``<name>.protocol.json``: select, test and cross-microscope rows, unlabelled checks; ``lib.protocol``),
the test panel PNG and the model card. ``--evaluate-only`` re-runs the protocol on the weights there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

from ..configs.registry import SPECS
from ..figures import plot_panel
from ..machine import default_device, describe_machine
from ..networks import load_weights
from ..protocol import run_protocol
from .augmentation import describe, recipe_augmentation
from .data import load_source
from .report import plot_learning_curve, write_history, write_model_card
from .supervised import train_segmentation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--model-dir", default=os.path.join("apps", "axonseg", "model"))
    parser.add_argument("--epochs", type=int, help="override the recipe")
    parser.add_argument("--iterations", type=int, help="iterations per epoch; overrides the recipe")
    parser.add_argument("--val-every", type=int, help="epochs between validations; overrides the recipe")
    parser.add_argument("--pretrained-encoder", help="start from this ssl_pretrain encoder file with a fresh decoder")
    parser.add_argument("--freeze-encoder-epochs", type=int, default=0, help="keep that encoder fixed this long")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--card-only", action="store_true", help="re-render the model card and plot from the saved history"
    )
    parser.add_argument(
        "--evaluate-only", action="store_true", help="run the protocol on the weights there, then write the card"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    spec = SPECS[args.model]
    recipe = spec.recipe
    epochs = args.epochs or recipe.epochs
    iterations = args.iterations or recipe.iterations_per_epoch
    weights = os.path.join(args.model_dir, f"{spec.name}.pt")
    history_path = os.path.join(args.model_dir, f"{spec.name}.history.json")
    card = os.path.join(args.model_dir, f"{spec.name}.md")

    transforms, artifacts = recipe_augmentation(spec, args.data_dir)
    augmentation = describe(transforms, spec, artifacts)

    protocol_path = os.path.join(args.model_dir, f"{spec.name}.protocol.json")

    def judge() -> dict:
        """The protocol on the weights at ``weights``: report JSON and the test panel PNG."""
        network, _ = load_weights(weights, args.device)
        report, evaluations = run_protocol(spec, network, args.data_dir, device=args.device)
        report["machine"] = describe_machine(args.device)
        with open(protocol_path, "w") as f:
            json.dump(report, f, indent=1)
        shown = [e for e in evaluations if e.row["split"] in ("test", "cross", "unlabelled")]
        pooled = report["pooled"].get("test", {})
        plot_panel(
            os.path.join(args.model_dir, f"{spec.name}.test_panel.png"),
            shown,
            f"{spec.name}: test and cross-microscope regions (pooled test F1 {pooled.get('f1', float('nan')):.3f})",
            slices=2,
        )
        return report

    def write_reports(history: list[dict], command: str, machine: str, protocol: dict) -> None:
        write_history(history_path, history)
        plot = os.path.join(args.model_dir, f"{spec.name}.learning_curve.png")
        plot_learning_curve(plot, history, f"{spec.name}: training on {args.device}")
        write_model_card(
            card, spec, args.data_dir, history, command, weights, iterations, machine, augmentation, protocol
        )

    if args.card_only or args.evaluate_only:
        _, meta = load_weights(weights)
        if args.evaluate_only:
            protocol = judge()
        else:
            with open(protocol_path) as f:
                protocol = json.load(f)
        with open(history_path) as f:
            history = json.load(f)
        write_reports(history, meta["command"], meta.get("machine") or describe_machine(args.device), protocol)
        return
    train = [load_source(args.data_dir, s, spec) for s in recipe.train]
    val = [load_source(args.data_dir, s, spec) for s in recipe.select]
    print(
        f"{spec.name}: {len(train)} training volumes, {len(val)} validation volumes, "
        f"{len(artifacts)} artifact cubes; augmentation: {', '.join(augmentation)}",
        flush=True,
    )

    os.makedirs(args.model_dir, exist_ok=True)
    history: list[dict] = []
    machine = describe_machine(args.device)

    def on_epoch(stats) -> None:
        history.append(stats.to_dict())
        val_text = f" val F1 {stats.validation['f1']:.3f}" if stats.validation else ""
        print(
            f"epoch {stats.epoch}/{stats.total_epochs} loss {stats.loss:.4f}{val_text} ({stats.seconds:.0f} s)",
            flush=True,
        )

    command = "PYTHONPATH=apps/axonseg .venv/bin/python -m lib.trainers.cli " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    train_segmentation(
        spec,
        train,
        val,
        weights,
        epochs=epochs,
        iterations_per_epoch=iterations,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        foreground_fraction=recipe.foreground_fraction,
        seed=recipe.seed,
        val_every=args.val_every or recipe.val_every,
        transforms=transforms,
        pretrained_encoder=args.pretrained_encoder,
        freeze_encoder_epochs=args.freeze_encoder_epochs,
        device=args.device,
        meta={
            "name": spec.name,
            "recipe": "reference",
            "command": command,
            "machine": machine,
            "pretrained_encoder": args.pretrained_encoder,
        },
        on_epoch=on_epoch,
    )
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.1f} MB); judging it on the test split", flush=True)
    protocol = judge()
    write_reports(history, command, machine, protocol)
    print(json.dumps({"pooled": protocol["pooled"], "unlabelled": protocol["unlabelled"]}, indent=1))


if __name__ == "__main__":
    main()
