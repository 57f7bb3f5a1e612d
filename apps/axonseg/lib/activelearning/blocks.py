"""Large volumes as fixed ROI blocks (typed regions, as in gunpowder).

A volume too large to annotate whole is tiled into blocks of ``block_size`` voxels (edge blocks are
cut short, so blocks never overlap and every voxel belongs to exactly one). Each block becomes an
image of its own: scored, leased and served by next-sample like any other, with its offset in the
parent. A block's saved label is pasted into the parent's label at that offset.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..transforms.io import Volume

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Block:
    """A region of a parent image: ``offset`` and ``shape`` in voxels, (z, y, x)."""

    parent: str
    offset: Shape
    shape: Shape

    @property
    def id(self) -> str:
        z, y, x = self.offset
        return f"{self.parent}_block_z{z}_y{y}_x{x}"

    @property
    def region(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape))  # type: ignore[return-value]


def needs_blocks(shape: Shape, block_size: Shape) -> bool:
    """True for volumes of more than two blocks' voxels that exceed a block along some axis."""
    return math.prod(shape) > 2 * math.prod(block_size) and any(s > b for s, b in zip(shape, block_size))


def grid(parent: str, shape: Shape, block_size: Shape) -> list[Block]:
    """The blocks tiling ``shape``, in z, y, x order."""
    starts = [range(0, s, b) for s, b in zip(shape, block_size)]
    return [
        Block(parent, offset, tuple(min(b, s - o) for o, b, s in zip(offset, block_size, shape)))  # type: ignore[arg-type]
        for offset in itertools.product(*starts)
    ]


def crop(volume: Volume, block: Block) -> Volume:
    """The block's voxels with their physical placement: the origin moves by the offset (through the
    direction cosines), so a viewer shows the block where it lies in the parent."""
    offset_xyz = np.array(block.offset[::-1], float) * np.array(volume.spacing[::-1], float)
    direction = np.eye(3) if volume.direction is None else np.asarray(volume.direction, float)
    origin_xyz = np.array(volume.origin[::-1], float) + direction @ offset_xyz
    return dataclasses.replace(
        volume, array=np.ascontiguousarray(volume.array[block.region]), origin=tuple(origin_xyz[::-1].tolist())
    )


def paste(parent_label: np.ndarray, block_label: np.ndarray, block: Block) -> np.ndarray:
    """``parent_label`` with ``block_label`` written at the block's region (a new array)."""
    if block_label.shape != block.shape:
        raise ValueError(f"label shape {block_label.shape} does not match block {block.id} shape {block.shape}")
    out = parent_label.copy()
    out[block.region] = block_label
    return out
