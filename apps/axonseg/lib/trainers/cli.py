"""Train a structure's shipped weights from its recipe on the shared data.

    PYTHONPATH=apps/axonseg python -m lib.trainers.cli mitochondria --data-dir ../shared/data

Writes ``<model-dir>/<name>.pt`` plus history JSON, learning-curve PNG and model card.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

from ..configs.registry import SPECS
from ..machine import default_device, describe_machine
from ..networks import load_weights
from .augmentation import describe, load_artifact_cubes, load_histogram_reference, training_transforms
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
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    spec = SPECS[args.model]
    recipe = spec.recipe
    epochs = args.epochs or recipe.epochs
    iterations = args.iterations or recipe.iterations_per_epoch
    weights = os.path.join(args.model_dir, f"{spec.name}.pt")
    history_path = os.path.join(args.model_dir, f"{spec.name}.history.json")
    card = os.path.join(args.model_dir, f"{spec.name}.md")

    artifacts = load_artifact_cubes(args.data_dir, spec)
    transforms = training_transforms(spec, load_histogram_reference(args.data_dir, spec), artifacts)
    augmentation = describe(transforms, spec, artifacts)

    def write_reports(history: list[dict], command: str, machine: str) -> None:
        write_history(history_path, history)
        plot = os.path.join(args.model_dir, f"{spec.name}.learning_curve.png")
        plot_learning_curve(plot, history, f"{spec.name}: training on {args.device}")
        write_model_card(card, spec, args.data_dir, history, command, weights, iterations, machine, augmentation)

    if args.card_only:
        _, meta = load_weights(weights)
        with open(history_path) as f:
            write_reports(json.load(f), meta["command"], meta.get("machine") or describe_machine(args.device))
        return
    train = [load_source(args.data_dir, s, spec) for s in recipe.train]
    val = [load_source(args.data_dir, s, spec) for s in recipe.val]
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
    write_reports(history, command, machine)
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
