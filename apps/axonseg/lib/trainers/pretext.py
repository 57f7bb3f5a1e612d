"""Self-supervised pretext tasks that train a structure's U-Net encoder on unlabelled volumes.

- ``slice_permutation`` (Klinghoffer et al., 2020, seed ``000``): reorder the 8 z-slices of a crop by
  one of 10 permutations chosen to be far apart in Hamming distance; the encoder plus a small
  classifier predicts which one (cross-entropy).
- ``masked``: hide random blocks of a crop; the whole U-Net fills them in (MSE on hidden voxels).
- ``edges``: the same hidden blocks, but the U-Net predicts the crop's edge map (Sobel gradient
  magnitude of the smoothed crop) everywhere, hidden or not; Xu et al. (2024) report edge
  reconstruction as the stronger task for axons.

Each task maps a batch of normalised crops ``(B, 1, z, y, x)`` to ``(input, target)`` tensors, owns
the network it trains (always containing the structure's ``DynUNet``, whose encoder is what gets
transferred), and scores itself on a fixed set of crops (accuracy or MSE).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..configs.spec import StructureSpec
from ..networks import build_network
from .encoder import encode

PERMUTED_SLICES = 8
PERMUTATION_CLASSES = 10


def max_hamming_permutations(n_items: int = PERMUTED_SLICES, count: int = PERMUTATION_CLASSES, seed: int = 0):
    """``count`` permutations of ``n_items``, greedily chosen to be as far apart as possible.

    The first is drawn at random; each next one maximises the minimum Hamming distance to those
    chosen so far (ties: the larger mean distance, then the seeded draw), as in the jigsaw-puzzle
    pretext task (Noroozi & Favaro 2016) the seed paper follows. Deterministic for a given seed.

    Returns:
        int array ``(count, n_items)``; row ``k`` lists the source slice of each output slice.
    """
    candidates = np.array(list(itertools.permutations(range(n_items))), dtype=np.int8)
    if count > len(candidates):
        raise ValueError(f"{n_items} items have only {len(candidates)} permutations, not {count}")
    rng = np.random.default_rng(seed)
    tie_break = rng.random(len(candidates))  # a fixed random order among equally good candidates
    chosen = [int(rng.integers(len(candidates)))]
    min_distance = np.full(len(candidates), n_items + 1, dtype=np.int64)
    sum_distance = np.zeros(len(candidates), dtype=np.int64)
    for _ in range(count - 1):
        distance = (candidates != candidates[chosen[-1]]).sum(axis=1)
        min_distance = np.minimum(min_distance, distance)
        sum_distance += distance
        min_distance[chosen] = -1  # never pick one twice
        # Lexicographic: min distance first, then mean distance, then the seeded tie-break.
        key = min_distance * 1e6 + sum_distance + tie_break
        chosen.append(int(np.argmax(key)))
    return candidates[chosen].astype(np.int64)


class PermutationClassifier(torch.nn.Module):
    """The structure's U-Net, of which only the encoder runs, plus a classifier over the bottleneck."""

    def __init__(self, spec: StructureSpec, classes: int = PERMUTATION_CLASSES):
        super().__init__()
        self.unet = build_network(**spec.network_args())
        width = spec.filters[-1]
        # Pool y/x fully but keep z where the encoder left any: slice order lives along z.
        self.pool = torch.nn.AdaptiveAvgPool3d((2, 1, 1))
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(2 * width, 128),
            torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(128, classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(encode(self.unet, image)))


class _UNetReconstruction(torch.nn.Module):
    """The whole U-Net, its single output channel read as a regression."""

    def __init__(self, spec: StructureSpec):
        super().__init__()
        self.unet = build_network(**spec.network_args())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(image)


@dataclass
class SlicePermutation:
    """Predict which of the max-Hamming permutations reordered a crop's 8 z-slices."""

    seed: int = 0
    name: str = "slice_permutation"

    def __post_init__(self):
        self.permutations = max_hamming_permutations(seed=self.seed)

    def crop_size(self, spec: StructureSpec) -> tuple[int, int, int]:
        return (PERMUTED_SLICES, *spec.patch_size[1:])

    def build(self, spec: StructureSpec) -> PermutationClassifier:
        return PermutationClassifier(spec, len(self.permutations))

    def make_batch(self, crops: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        classes = rng.integers(len(self.permutations), size=len(crops))
        permuted = np.stack([crop[:, self.permutations[k]] for crop, k in zip(crops, classes)])
        return torch.from_numpy(np.ascontiguousarray(permuted)), torch.from_numpy(classes)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((output.argmax(1) == target).float().mean())}


def hide_blocks(crops: np.ndarray, rng: np.random.Generator, fraction: float, block: tuple[int, ...]):
    """Zero a random ``fraction`` of the ``block``-sized cells of each crop; returns (hidden, mask of hidden)."""
    batch, _, *shape = crops.shape
    grid = [max(s // b, 1) for s, b in zip(shape, block)]
    cells = rng.random((batch, 1, *grid)) < fraction
    mask = cells
    for axis, (s, g) in enumerate(zip(shape, grid)):
        mask = np.repeat(mask, -(-s // g), axis=axis + 2)
    mask = mask[(slice(None), slice(None), *(slice(0, s) for s in shape))]
    return np.where(mask, 0.0, crops).astype(np.float32), mask


def edge_map(crop: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the lightly smoothed crop, scaled so its 99th percentile is 1."""
    smooth = ndimage.gaussian_filter(crop.astype(np.float32), 1.0)
    magnitude = np.sqrt(sum(ndimage.sobel(smooth, axis=a) ** 2 for a in range(crop.ndim)))
    return (magnitude / max(float(np.percentile(magnitude, 99)), 1e-6)).astype(np.float32)


@dataclass
class Reconstruction:
    """Fill in hidden blocks (``target="intensity"``) or draw the edge map (``target="edges"``)."""

    target: str = "intensity"
    hidden_fraction: float = 0.4
    blocks_per_axis: int = 8

    @property
    def name(self) -> str:
        return "masked" if self.target == "intensity" else "edges"

    def crop_size(self, spec: StructureSpec) -> tuple[int, int, int]:
        return spec.patch_size

    def build(self, spec: StructureSpec) -> _UNetReconstruction:
        return _UNetReconstruction(spec)

    def make_batch(self, crops: np.ndarray, rng: np.random.Generator):
        block = tuple(max(s // self.blocks_per_axis, 1) for s in crops.shape[2:])
        hidden, mask = hide_blocks(crops, rng, self.hidden_fraction, block)
        if self.target == "intensity":
            target, weight = crops, mask
        else:
            target = np.stack([edge_map(c[0])[None] for c in crops])
            weight = np.ones_like(mask)
        return torch.from_numpy(hidden), (torch.from_numpy(target), torch.from_numpy(weight.astype(np.float32)))

    def loss(self, output: torch.Tensor, target) -> torch.Tensor:
        values, weight = target
        return ((output - values) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)

    def score(self, output: torch.Tensor, target) -> dict[str, float]:
        return {"mse": float(self.loss(output, target))}


PRETEXT_TASKS = ("slice_permutation", "masked", "edges")


def make_pretext_task(name: str, seed: int = 0) -> SlicePermutation | Reconstruction:
    if name == "slice_permutation":
        return SlicePermutation(seed=seed)
    if name == "masked":
        return Reconstruction("intensity")
    if name == "edges":
        return Reconstruction("edges")
    raise ValueError(f"unknown pretext task '{name}'; choose one of {', '.join(PRETEXT_TASKS)}")
