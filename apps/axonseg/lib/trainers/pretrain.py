"""The self-supervised pretraining loop: unlabelled volumes in, an encoder weights file out.

Crops are drawn from the volumes (normalised as inference normalises them), keeping the quarter
with the most contrast: light-sheet volumes are mostly dim background, where no pretext task can be
solved (slice permutation stayed at chance on uniform TRAILMAP crops), flipped and
rotated in-plane only (a z flip would make a permutation and its reverse look alike), and turned
into ``(input, target)`` batches by the pretext task (``lib.trainers.pretext``). After every epoch
the task scores itself on a fixed set of crops drawn with another seed, so the curve shows whether
the pretext task is being learnt; the last epoch's encoder is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..configs.spec import StructureSpec
from .encoder import save_encoder
from .pretext import Reconstruction, SlicePermutation
from .supervised import EpochStats, TrainingStopped

_SCORE_CROPS = 32
_CANDIDATES_PER_CROP = 4  # keep the most contrasted of this many uniform draws


def random_crops(
    volumes: list[np.ndarray], size, count: int, rng: np.random.Generator, candidates: int = 1
) -> np.ndarray:
    """``count`` crops ``(1, *size)``: the ``count`` with the highest standard deviation among
    ``count * candidates`` drawn at uniform positions. Volumes smaller than ``size`` are edge-padded."""
    weights = np.array([v.size for v in volumes], dtype=float)
    crops = []
    for _ in range(count * candidates):
        volume = volumes[int(rng.choice(len(volumes), p=weights / weights.sum()))]
        pad = [(0, max(s - d, 0)) for s, d in zip(size, volume.shape)]
        if any(after for _, after in pad):
            volume = np.pad(volume, pad, mode="edge")
        corner = [int(rng.integers(d - s + 1)) for s, d in zip(size, volume.shape)]
        crops.append(volume[tuple(slice(c, c + s) for c, s in zip(corner, size))][None])
    drawn = np.stack(crops).astype(np.float32)
    if candidates == 1:
        return drawn
    contrast = drawn.reshape(len(drawn), -1).std(axis=1)
    return drawn[np.sort(np.argsort(contrast)[-count:])]


def augment_in_plane(crops: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random y/x flips and a 90° in-plane turn where y and x have the same size."""
    out = []
    for crop in crops:
        for axis in (2, 3):
            if rng.random() < 0.5:
                crop = np.flip(crop, axis)
        if crop.shape[2] == crop.shape[3]:
            crop = np.rot90(crop, int(rng.integers(4)), axes=(2, 3))
        out.append(np.ascontiguousarray(crop))
    return np.stack(out)


def _to(device, value):
    if isinstance(value, tuple):
        return tuple(_to(device, v) for v in value)
    return value.to(device)


def pretrain_encoder(
    spec: StructureSpec,
    task: SlicePermutation | Reconstruction,
    volumes: list[np.ndarray],
    output_path: str,
    *,
    epochs: int,
    iterations_per_epoch: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    device: str = "cpu",
    meta: dict | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Train ``task`` on ``volumes`` and write the encoder of ``spec``'s U-Net to ``output_path``.

    Args:
        volumes: normalised float arrays ``(z, y, x)``; no labels.
        should_stop: polled every iteration; True raises :class:`TrainingStopped` (nothing written).
    Returns:
        the last epoch's stats; ``validation`` holds the task's score on the fixed crops.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = task.crop_size(spec)
    model = task.build(spec).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * iterations_per_epoch)
    score_rng = np.random.default_rng(seed + 10_000)
    score_crops = random_crops(volumes, size, _SCORE_CROPS, score_rng, _CANDIDATES_PER_CROP)
    score_inputs, score_targets = task.make_batch(score_crops, score_rng)
    started = time.time()
    stats = EpochStats(0, epochs, 0.0, 0.0, 0.0)
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start, losses = time.time(), []
        for _ in range(iterations_per_epoch):
            if should_stop and should_stop():
                raise TrainingStopped(f"stopped in epoch {epoch}")
            crops = augment_in_plane(random_crops(volumes, size, batch_size, rng, _CANDIDATES_PER_CROP), rng)
            inputs, target = task.make_batch(crops, rng)
            loss = task.loss(model(inputs.to(device)), _to(device, target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad():
            score = task.score(model(score_inputs.to(device)), _to(device, score_targets))
        stats = EpochStats(
            epoch, epochs, float(np.mean(losses)), time.time() - epoch_start, time.time() - started, score
        )
        if on_epoch:
            on_epoch(stats)
    save_encoder(
        output_path,
        model.unet,
        spec.network_args(),
        {
            **(meta or {}),
            "structure": spec.name,
            "modality": spec.modality,
            "task": task.name,
            "epochs": epochs,
            "iterations_per_epoch": iterations_per_epoch,
            "score": stats.validation,
            **({"permutations": task.permutations.tolist()} if isinstance(task, SlicePermutation) else {}),
            "trained_at": time.time(),
        },
    )
    return stats
