"""Typed regions of a volume (as gunpowder's ``Roi`` and daisy's blocks): offset and shape in voxels, (z, y, x).

A volume too large to annotate whole is tiled into regions of ``region_size`` voxels (edge regions
are cut short, so regions never overlap and every voxel belongs to exactly one). Region sizes are
multiples of the store's chunk shape, so a region's label write touches only its own chunks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Shape = tuple[int, int, int]


def zyx(values: Iterable[Any]) -> Shape:
    """Three whole numbers (z, y, x) from any three (a database row's JSON list, a generator, a tuple)."""
    z, y, x = (int(v) for v in values)
    return (z, y, x)


def voxel_size(values: Iterable[Any] | None) -> tuple[float, float, float] | None:
    """A (z, y, x) voxel size as three floats (from a database row's JSON list); None where it is unknown."""
    if not values:
        return None
    z, y, x = (float(v) for v in values)
    return (z, y, x)


class Boxed(Protocol):
    """Anything with an offset and a shape in voxels: a region row, a label record."""

    @property
    def offset(self) -> Sequence[Any]: ...

    @property
    def shape(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class Roi:
    """A box of voxels: ``offset`` (first voxel) and ``shape``, both (z, y, x)."""

    offset: Shape
    shape: Shape

    @classmethod
    def whole(cls, shape: Shape) -> Roi:
        return cls((0, 0, 0), zyx(shape))

    @classmethod
    def between(cls, start: Iterable[Any], end: Iterable[Any]) -> Roi:
        """The roi from voxel ``start`` up to (not including) ``end``."""
        first, last = zyx(start), zyx(end)
        return cls(first, zyx(e - s for s, e in zip(first, last)))

    @classmethod
    def of(cls, box: Boxed) -> Roi:
        """The roi of a stored region (or anything else with an ``offset`` and a ``shape``)."""
        return cls(zyx(box.offset), zyx(box.shape))

    @property
    def end(self) -> Shape:
        return zyx(o + s for o, s in zip(self.offset, self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        z, y, x = (slice(o, e) for o, e in zip(self.offset, self.end))
        return (z, y, x)

    def shift(self, by: Iterable[int]) -> Roi:
        """This roi moved by ``by`` voxels (its shape unchanged)."""
        return Roi(zyx(o + d for o, d in zip(self.offset, by)), self.shape)

    def relative_to(self, outer: Roi) -> tuple[slice, slice, slice]:
        """This roi's voxels as slices into an array holding ``outer``."""
        z, y, x = (slice(o - p, e - p) for o, e, p in zip(self.offset, self.end, outer.offset))
        return (z, y, x)

    def grow(self, context: Shape, within: Shape) -> Roi:
        """This roi with ``context`` voxels added on every side, clipped to a volume of shape ``within``."""
        start = (max(0, o - c) for o, c in zip(self.offset, context))
        end = (min(w, e + c) for e, c, w in zip(self.end, context, within))
        return Roi.between(start, end)

    def contains(self, other: Roi) -> bool:
        return all(o >= s and e <= t for o, e, s, t in zip(other.offset, other.end, self.offset, self.end))

    def to_json(self) -> dict[str, list[int]]:
        return {"offset": list(self.offset), "shape": list(self.shape)}


def region_id(image_id: str, roi: Roi, whole: bool) -> str:
    """The id a region is served under: the image's own id when it covers the whole image."""
    if whole:
        return image_id
    z, y, x = roi.offset
    return f"{image_id}_block_z{z}_y{y}_x{x}"


def needs_regions(shape: Shape, region_size: Shape) -> bool:
    """True for volumes of more than two regions' voxels that exceed a region along some axis."""
    return math.prod(shape) > 2 * math.prod(region_size) and any(s > b for s, b in zip(shape, region_size))


def align(size: Shape, chunks: Shape) -> Shape:
    """``size`` rounded up to whole chunks."""
    return zyx(max(c, math.ceil(s / c) * c) for s, c in zip(size, chunks))


def grid(shape: Shape, block: Shape) -> list[Roi]:
    """The rois tiling ``shape`` in blocks of ``block``, in z, y, x order (edge blocks cut short)."""
    starts = [range(0, s, b) for s, b in zip(shape, block)]
    return [
        Roi(zyx(offset), zyx(min(b, s - o) for o, b, s in zip(offset, block, shape)))
        for offset in itertools.product(*starts)
    ]
