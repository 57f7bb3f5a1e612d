"""The supervised training loop as a plain function: volumes in, best weights file out.

The loss is the recipe's (``lib.trainers.losses``: BCE + soft Dice by default, or focal + Dice,
optionally class-weighted) over the voxels the mask allows, so sparse labels (TRAILMAP) only teach
what was annotated. The best epoch by validation F1 is written atomically to ``output_path``.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.transforms import Compose

from ..configs.spec import StructureSpec
from ..networks import build_network, load_weights, save_checkpoint, save_weights
from ..protocol import score_volumes
from .augmentation import training_transforms
from .data import PatchSampler, TrainingVolume, mixing_weights
from .encoder import as_unet, load_encoder, set_encoder_trainable
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


@dataclass(frozen=True)
class TrainingPlan:
    """How one supervised run goes: schedule, starting point, patches and device (nnU-Net's plan, for one run).

    Attributes:
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
        checkpoint: a file the whole training state (weights, optimiser, schedule, random draws, history) is
            written to after every epoch; a run that finds it there resumes after its last epoch, bit for bit
            as if it had not stopped (a long CPU run continued in a later session, or on a GPU).
        meta: written into the weights file beside the epoch and its validation scores.
    """

    epochs: int
    iterations_per_epoch: int
    batch_size: int
    learning_rate: float
    foreground_fraction: float = 0.5
    seed: int = 0
    val_every: int = 1
    init_weights: str | None = None
    pretrained_encoder: str | None = None
    freeze_encoder_epochs: int = 0
    transforms: Compose | None = None
    replay: list[TrainingVolume] | None = None
    replay_share: float = 0.0
    keep_norm_statistics: bool = False
    device: str = "cpu"
    checkpoint: str | None = None
    meta: dict | None = None


def train_segmentation(
    spec: StructureSpec,
    train: list[TrainingVolume],
    val: list[TrainingVolume],
    output_path: str,
    plan: TrainingPlan,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Train ``spec``'s network as ``plan`` says and keep the weights of the best epoch by F1 on ``val`` (the
    recipe's ``select`` split, never its ``test`` split) at ``output_path``.

    Args:
        on_epoch: called after every epoch with its :class:`EpochStats` (progress reporting).
        should_stop: polled every iteration; True raises :class:`TrainingStopped` and keeps the
            best weights written so far.
    Returns:
        stats of the last epoch (``best_metric`` / ``best_epoch`` say which one was kept).
    """
    torch.manual_seed(plan.seed)
    network = _starting_network(spec, plan)
    sampler = _patch_sampler(spec, train, plan)
    optimizer = torch.optim.AdamW(network.parameters(), lr=plan.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.epochs * plan.iterations_per_epoch)
    state = TrainingState(network, optimizer, scheduler, sampler)
    history = state.resume(plan.checkpoint, plan.device) if plan.checkpoint else []
    stats = EpochStats(**history[-1]) if history else EpochStats(0, plan.epochs, 0.0, 0.0, 0.0)
    best_metric, best_epoch, started = stats.best_metric, stats.best_epoch, time.time() - stats.total_time
    for done in history:
        if on_epoch:
            on_epoch(EpochStats(**done))
    for epoch in range(stats.epoch + 1, plan.epochs + 1):
        epoch_start = time.time()
        _set_train_mode(network, plan, epoch)
        losses = [
            _step(network, spec, sampler, optimizer, scheduler, plan, should_stop, epoch)
            for _ in range(plan.iterations_per_epoch)
        ]
        validation: dict[str, float] = {}
        if val and (epoch % plan.val_every == 0 or epoch == plan.epochs):
            validation = score_volumes(network, val, spec, plan.device)
            if validation["f1"] > best_metric:
                best_metric, best_epoch = validation["f1"], epoch
                extra = {"epoch": epoch, "validation": validation, "trained_at": time.time()}
                save_weights(output_path, network, spec.network_args(), {**(plan.meta or {}), **extra})
        now = time.time()
        stats = EpochStats(
            epoch, plan.epochs, float(np.mean(losses)), now - epoch_start, now - started, validation, best_metric,
            best_epoch,
        )  # fmt: skip
        history.append(stats.to_dict())
        if plan.checkpoint:
            state.save(plan.checkpoint, history)
        if on_epoch:
            on_epoch(stats)
    if not val:  # nothing to select on: keep the last epoch
        extra = {"epoch": plan.epochs, "trained_at": time.time()}
        save_weights(output_path, network, spec.network_args(), {**(plan.meta or {}), **extra})
    return stats


@dataclass
class TrainingState:
    """Everything a run needs to go on where it stopped: weights, optimiser, schedule and every random draw
    (torch's, the patch sampler's, each augmentation's), with the history of the epochs done."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: PatchSampler

    def save(self, path: str, history: list[dict]) -> None:
        save_checkpoint(
            path,
            {
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": self.sampler.rng.bit_generator.state,
                "transforms": pickle.dumps(self.sampler.transforms),  # their RandomStates, as drawn so far
                "history": history,
            },
        )

    def resume(self, path: str, device: str) -> list[dict]:
        """Load the state at ``path`` if there is one; the history of the epochs it holds ([] if none)."""
        if not os.path.exists(path):
            return []
        # Not weights_only: the file holds pickled augmentations. It is the trainer's own, never an upload.
        state = torch.load(path, map_location=device, weights_only=False)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.sampler.transforms = pickle.loads(state["transforms"])
        return list(state["history"])


def _starting_network(spec: StructureSpec, plan: TrainingPlan) -> torch.nn.Module:
    """Served weights (fine-tuning), a fresh U-Net around a pretrained encoder, or a fresh U-Net."""
    if plan.init_weights and plan.pretrained_encoder:
        raise ValueError("start from whole weights or from a pretrained encoder, not both")
    if plan.init_weights:
        network, _ = load_weights(plan.init_weights, plan.device)
        return network
    network = build_network(**spec.network_args())
    if plan.pretrained_encoder:
        load_encoder(network, plan.pretrained_encoder, spec.network_args())
    return network.to(plan.device)


def _patch_sampler(spec: StructureSpec, train: list[TrainingVolume], plan: TrainingPlan) -> PatchSampler:
    transforms = plan.transforms if plan.transforms is not None else training_transforms(spec)
    replay = list(plan.replay or [])
    weights = mixing_weights(train, replay, plan.replay_share)
    return PatchSampler(train + replay, spec.patch_size, plan.foreground_fraction, plan.seed, transforms, weights)


def _set_train_mode(network: torch.nn.Module, plan: TrainingPlan, epoch: int) -> None:
    network.train()
    if plan.keep_norm_statistics:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()  # running statistics stay those of the recipe's data
    if plan.freeze_encoder_epochs:
        set_encoder_trainable(as_unet(network), epoch > plan.freeze_encoder_epochs)


def _step(
    network: torch.nn.Module,
    spec: StructureSpec,
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    plan: TrainingPlan,
    should_stop: Callable[[], bool] | None,
    epoch: int,
) -> float:
    """One optimiser step on a batch of patches; its loss."""
    if should_stop and should_stop():
        raise TrainingStopped(f"stopped in epoch {epoch}")
    image, target, mask = (torch.from_numpy(a).to(plan.device) for a in sampler.batch(plan.batch_size))
    loss = LOSSES[spec.recipe.loss](network(image), target.float(), mask, pos_weight=spec.recipe.pos_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())
