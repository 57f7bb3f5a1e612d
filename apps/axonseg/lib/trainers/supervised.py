"""The supervised training loop as a plain function: volumes in, best weights file out.

The loss is the recipe's (``lib.trainers.losses``: BCE + soft Dice by default, or focal + Dice,
optionally class-weighted) over the voxels the mask allows, so sparse labels (TRAILMAP) only teach
what was annotated. The best epoch by validation F1 is written atomically to ``output_path``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.transforms import Compose

from ..configs.spec import StructureSpec
from ..networks import build_network, load_weights, save_weights
from ..protocol import score_volumes
from .augmentation import training_transforms
from .data import PatchSampler, TrainingVolume, mixing_weights
from .encoder import load_encoder, set_encoder_trainable
from .losses import LOSSES


@dataclass
class EpochStats:
    epoch: int
    total_epochs: int
    loss: float
    seconds: float
    total_time: float
    validation: dict[str, float] = field(default_factory=dict)
    best_metric: float = -1.0
    best_epoch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingStopped(Exception):
    """A job asked to stop: raised inside the training loops when ``should_stop`` returns True, and by a worker
    before a forward pass of the job it was asked to stop (``lib.jobs.worker``)."""


def train_segmentation(
    spec: StructureSpec,
    train: list[TrainingVolume],
    val: list[TrainingVolume],
    output_path: str,
    *,
    epochs: int,
    iterations_per_epoch: int,
    batch_size: int,
    learning_rate: float,
    foreground_fraction: float = 0.5,
    seed: int = 0,
    val_every: int = 1,
    init_weights: str | None = None,
    pretrained_encoder: str | None = None,
    freeze_encoder_epochs: int = 0,
    transforms: Compose | None = None,
    replay: list[TrainingVolume] | None = None,
    replay_share: float = 0.0,
    keep_norm_statistics: bool = False,
    device: str = "cpu",
    meta: dict | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Train ``spec``'s network and keep the weights of the best epoch by F1 on ``val`` (the recipe's
    ``select`` split, never its ``test`` split) at ``output_path``.

    Args:
        init_weights: start from this weights file (fine-tuning) instead of random weights.
        pretrained_encoder: an encoder file (``lib.trainers.encoder``) loaded into a fresh U-Net,
            whose decoder starts from random weights; not together with ``init_weights``.
        freeze_encoder_epochs: keep the encoder (pretrained or served) fixed for this many first epochs, so
            the decoder adapts first: a fresh one to a pretrained encoder, or a fine-tuned one to new labels
            too few to retrain the features on.
        transforms: patch augmentations; default the recipe's, without the ones that need reference data.
        replay: volumes of the recipe's own training data that ``replay_share`` of patches come from
            (fine-tuning on a new microscope without forgetting the old one).
        keep_norm_statistics: batch norms keep their running statistics (fine-tuning on batches of a few
            patches would otherwise replace the statistics of the whole recipe with theirs).
        on_epoch: called after every epoch with its :class:`EpochStats` (progress reporting).
        should_stop: polled every iteration; True raises :class:`TrainingStopped` and keeps the
            best weights written so far.
    Returns:
        stats of the last epoch (``best_metric`` / ``best_epoch`` say which one was kept).
    """
    torch.manual_seed(seed)
    loss_fn = LOSSES[spec.recipe.loss]
    if init_weights and pretrained_encoder:
        raise ValueError("start from whole weights or from a pretrained encoder, not both")
    if init_weights:
        network, _ = load_weights(init_weights, device)
    else:
        network = build_network(**spec.network_args())
        if pretrained_encoder:
            load_encoder(network, pretrained_encoder, spec.network_args())
        network = network.to(device)
    transforms = transforms if transforms is not None else training_transforms(spec)
    replay = list(replay or [])
    weights = mixing_weights(train, replay, replay_share)
    sampler = PatchSampler(train + replay, spec.patch_size, foreground_fraction, seed, transforms, weights)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * iterations_per_epoch)
    best_metric, best_epoch, started = -1.0, 0, time.time()
    stats = EpochStats(0, epochs, 0.0, 0.0, 0.0)
    for epoch in range(1, epochs + 1):
        network.train()
        if keep_norm_statistics:
            for module in network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()  # running statistics stay those of the recipe's data
        if freeze_encoder_epochs:
            set_encoder_trainable(network, epoch > freeze_encoder_epochs)
        epoch_start, losses = time.time(), []
        for _ in range(iterations_per_epoch):
            if should_stop and should_stop():
                raise TrainingStopped(f"stopped in epoch {epoch}")
            image, target, mask = (torch.from_numpy(a).to(device) for a in sampler.batch(batch_size))
            loss = loss_fn(network(image), target.float(), mask, pos_weight=spec.recipe.pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        validation: dict[str, float] = {}
        if val and (epoch % val_every == 0 or epoch == epochs):
            validation = score_volumes(network, val, spec, device)
            if validation["f1"] > best_metric:
                best_metric, best_epoch = validation["f1"], epoch
                save_weights(
                    output_path,
                    network,
                    spec.network_args(),
                    {
                        **(meta or {}),
                        "epoch": epoch,
                        "validation": validation,
                        "trained_at": time.time(),
                    },
                )
        stats = EpochStats(
            epoch,
            epochs,
            float(np.mean(losses)),
            time.time() - epoch_start,
            time.time() - started,
            validation,
            best_metric,
            best_epoch,
        )
        if on_epoch:
            on_epoch(stats)
    if not val:  # nothing to select on: keep the last epoch
        save_weights(
            output_path,
            network,
            spec.network_args(),
            {**(meta or {}), "epoch": epochs, "trained_at": time.time()},
        )
    return stats
