"""Connected components and instances across blocks, with the same result as one pass over the volume.

Each write block labels its own part (:func:`label_block`): ids ``block_base(index) + k`` (uint64, unique
through the volume), with a table of each label's voxel count and flag. A coordinator then reads the
planes on both sides of every block boundary (:func:`boundary_pairs`), joins labels that touch across
them with union-find (:func:`resolve`) and writes one mapping from block labels to final ids, which each
block applies to its own voxels. Only the tables and boundary planes travel; no block reads another's
interior. As in seung-lab's igneous and the seed pipeline's ``trace.py``.

Two kinds:

- ``components`` (threshold, hysteresis, bilateral, objects): blocks label 6-connected components of a mask.
  Hysteresis keeps 6-components of ``p > low`` holding a voxel ``p > high`` (skimage's
  ``apply_hysteresis_threshold``; ``objects`` the same with ``min_peak``); then every method drops
  26-connected objects under ``min_size`` voxels of the whole volume (``postprocessing.remove_small``), and
  ``objects`` those spanning fewer than ``min_sections`` sections. So the 26-adjacencies between distinct
  6-components, inside blocks and across boundaries, are recorded too, and each label's first and last
  section. Exact.
- ``instances`` (watershed): blocks run the watershed on their context; instances touching across a
  boundary are joined when their contact covers at least half of the smaller one's cross-section there
  (split neighbours touch along a line, one object cut by the boundary along its whole section). Then
  sizes over the volume. Approximate: the distance transform near a block's context edge differs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Half of each neighbourhood (the other half is the same pairs seen from the other voxel).
FORWARD_6 = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
FORWARD_26 = tuple((z, y, x) for z, y, x in itertools.product((-1, 0, 1), repeat=3) if (z, y, x) > (0, 0, 0))
_BLOCK_BITS = 32  # a block may hold up to 2**32 - 1 labels
MIN_CONTACT = 0.5


def block_base(index: int) -> int:
    return (index + 1) << _BLOCK_BITS


@dataclass
class BlockTable:
    """What a block tells the coordinator about its labels (arrays of equal length, ``ids`` sorted)."""

    ids: np.ndarray  # uint64
    sizes: np.ndarray  # int64, voxels inside the write block
    flags: np.ndarray  # bool: hysteresis / objects: holds a voxel above ``high`` / ``min_peak``; else True
    pairs26: np.ndarray  # (n, 2) uint64: distinct labels 26-adjacent inside the block
    zmin: np.ndarray  # int64: the first and last section of each label, in the volume's z
    zmax: np.ndarray

    def save(self, path: str) -> None:
        np.savez(path, ids=self.ids, sizes=self.sizes, flags=self.flags, pairs26=self.pairs26, zmin=self.zmin,
                 zmax=self.zmax)  # fmt: skip

    @classmethod
    def load(cls, path: str) -> BlockTable:
        with np.load(path) as f:
            if "zmin" in f.files:
                zmin, zmax = f["zmin"], f["zmax"]
            else:  # a table of a job started before depths were kept: no depth rule can drop its labels
                zmin, zmax = np.zeros(len(f["ids"]), np.int64), np.full(len(f["ids"]), 2**40, np.int64)
            return cls(f["ids"], f["sizes"], f["flags"], f["pairs26"], zmin, zmax)


def adjacent_pairs(labels: np.ndarray, offsets: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """Unique (a, b) pairs, a < b, of distinct non-zero labels that are neighbours along ``offsets``."""
    found = []
    for d in offsets:
        lo = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(d, labels.shape))
        hi = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(d, labels.shape))
        a, b = labels[lo], labels[hi]
        keep = (a != 0) & (b != 0) & (a != b)
        if keep.any():
            found.append(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], axis=1))
    if not found:
        return np.zeros((0, 2), labels.dtype)
    pairs = np.concatenate(found)
    if labels.dtype == np.uint32:  # one 64-bit key per pair: a 1-D unique is much faster than rows
        keys = np.unique((pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64))
        return np.stack([keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)], 1).astype(np.uint32)
    return np.unique(pairs, axis=0)


def label_block(
    index: int,
    mask: np.ndarray | None = None,
    high: np.ndarray | None = None,
    instances: np.ndarray | None = None,
    z0: int = 0,
) -> tuple[np.ndarray, BlockTable]:
    """A write block's labels (uint64, 0 background) and table.

    ``mask``: label its 6-connected components (``high``: the hysteresis seeds, else every component is
    flagged). ``instances``: ids already made (watershed), renumbered into this block's range. ``z0``: the
    block's first section in the volume (labels' depths are kept in the volume's z).
    """
    if instances is not None:
        local, count = _renumber(instances)
        pairs = np.zeros((0, 2), np.uint64)
    else:
        local, count = ndimage.label(mask)  # 6-connected, as skimage's hysteresis
        pairs = None
    local = local.astype(np.uint32 if count < 2**32 else np.uint64, copy=False)  # half the memory of uint64
    base = np.uint64(block_base(index))
    sizes = np.bincount(local.ravel(), minlength=count + 1)[1:].astype(np.int64)
    if high is not None:
        flags = np.bincount(local[high].ravel(), minlength=count + 1)[1:] > 0
    else:
        flags = np.ones(count, bool)
    if pairs is None:  # on the block's own numbers, then moved into its range
        pairs = adjacent_pairs(local, FORWARD_26).astype(np.uint64) + base
    labels = np.where(local > 0, local.astype(np.uint64) + base, np.uint64(0))
    ids = np.arange(1, count + 1, dtype=np.uint64) + base
    boxes = ndimage.find_objects(local, max_label=count)
    zmin = np.array([z0 + (b[0].start if b else 0) for b in boxes], np.int64)
    zmax = np.array([z0 + (b[0].stop - 1 if b else 0) for b in boxes], np.int64)
    return labels, BlockTable(ids, sizes, flags, pairs, zmin, zmax)


def _renumber(instances: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(instances, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(instances.shape).astype(np.int64), int(np.count_nonzero(values))


@dataclass
class Boundary:
    """Labels that touch across block boundaries: 6-adjacent pairs with their contact (voxel pairs), the
    26-adjacent pairs, and each label's cross-section on the boundary planes it lies on."""

    pairs6: np.ndarray  # (n, 2) uint64
    contacts: np.ndarray  # (n,) int64
    pairs26: np.ndarray  # (m, 2) uint64
    section_ids: np.ndarray  # uint64, per (label, boundary) cross-section
    section_keys: np.ndarray  # (k, 2) int64: (axis, position) of that boundary
    section_sizes: np.ndarray  # int64


def boundary_pairs(read_labels, shape: tuple[int, int, int], block: tuple[int, int, int], tile: int = 1024) -> Boundary:
    """Scan every block boundary of a ``shape`` volume cut into ``block``-sized blocks.

    ``read_labels(slices)`` returns block labels (uint64) of a box. Each boundary is read as the two
    planes either side of it, in in-plane tiles of ``tile`` that overlap by one voxel, so diagonal
    neighbours at tile seams, block edges and corners are all seen.
    """
    p6, c6, p26, sid, skey, ssz = [], [], [], [], [], []
    for axis in range(3):
        for position in range(block[axis], shape[axis], block[axis]):
            plane_axes = [a for a in range(3) if a != axis]
            for start0 in range(0, shape[plane_axes[0]], tile):
                for start1 in range(0, shape[plane_axes[1]], tile):
                    box = [slice(position - 1, position + 1)] * 3
                    box[plane_axes[0]] = slice(start0, min(shape[plane_axes[0]], start0 + tile + 1))
                    box[plane_axes[1]] = slice(start1, min(shape[plane_axes[1]], start1 + tile + 1))
                    slab = np.moveaxis(np.asarray(read_labels(tuple(box))), axis, 0)
                    before, after = slab[0], slab[1]
                    # contacts: the same in-plane position, either side (6-adjacent across the boundary);
                    # the last row/column of the tile belongs to the next tile (counted once)
                    core = (slice(0, min(tile, before.shape[0])), slice(0, min(tile, before.shape[1])))
                    a, b = before[core], after[core]
                    touching = (a != 0) & (b != 0) & (a != b)
                    if touching.any():
                        pairs, counts = np.unique(
                            np.stack([np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])], 1),
                            axis=0,
                            return_counts=True,
                        )
                        p6.append(pairs)
                        c6.append(counts)
                    for side in (a, b):
                        ids, counts = np.unique(side[side != 0], return_counts=True)
                        sid.append(ids)
                        skey.append(np.tile([axis, position], (len(ids), 1)))
                        ssz.append(counts)
                    cross = adjacent_pairs(slab, tuple(d for d in FORWARD_26 if d[0] == 1))
                    p26.append(cross)
    return Boundary(
        *_pairs_with_counts(p6, c6),
        _unique_pairs(p26),
        *_sections(sid, skey, ssz),
    )


def _unique_pairs(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.unique(np.concatenate(parts), axis=0) if parts else np.zeros((0, 2), np.uint64)


def _pairs_with_counts(pairs: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    stacked, inverse = np.unique(np.concatenate(pairs), axis=0, return_inverse=True)
    return stacked, np.bincount(inverse.ravel(), weights=np.concatenate(counts)).astype(np.int64)


def _sections(ids: list, keys: list, sizes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not ids:
        return np.zeros(0, np.uint64), np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    table = np.concatenate([np.concatenate(ids)[:, None].astype(np.int64).view(np.int64), np.concatenate(keys)], 1)
    rows, inverse = np.unique(table, axis=0, return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=np.concatenate(sizes)).astype(np.int64)
    return rows[:, 0].view(np.uint64), rows[:, 1:], totals


@dataclass
class Mapping:
    """Block labels (sorted) and their final ids: 1..count, 0 where the object was dropped."""

    keys: np.ndarray  # uint64
    values: np.ndarray  # uint64
    count: int

    def apply(self, labels: np.ndarray) -> np.ndarray:
        out = np.zeros(labels.shape, np.uint64)
        nonzero = labels != 0
        if nonzero.any() and len(self.keys):
            where = np.searchsorted(self.keys, labels[nonzero])
            out[nonzero] = self.values[np.minimum(where, len(self.keys) - 1)]
        return out

    def save(self, folder: str) -> None:
        np.save(f"{folder}/keys.npy", self.keys)
        np.save(f"{folder}/values.npy", self.values)

    @classmethod
    def load(cls, folder: str, block_index: int | None = None) -> Mapping:
        """The mapping, or only one block's part of it (memory-mapped: a block reads its own range)."""
        keys = np.load(f"{folder}/keys.npy", mmap_mode="r")
        values = np.load(f"{folder}/values.npy", mmap_mode="r")
        if block_index is not None:
            lo, hi = np.searchsorted(keys, [block_base(block_index), block_base(block_index + 1)])
            keys, values = keys[lo:hi], values[lo:hi]
        return cls(np.asarray(keys), np.asarray(values), int(values.max()) if len(values) else 0)


def resolve(tables: list[BlockTable], boundary: Boundary, kind: str, min_size: int, min_sections: int = 1) -> Mapping:
    """Join block labels into objects and number those kept: ``min_size`` voxels or more, spanning
    ``min_sections`` sections or more (see the module docstring)."""
    ids = np.concatenate([t.ids for t in tables]) if tables else np.zeros(0, np.uint64)
    order = np.argsort(ids)
    ids = ids[order]
    sizes = np.concatenate([t.sizes for t in tables])[order] if tables else np.zeros(0, np.int64)
    flags = np.concatenate([t.flags for t in tables])[order] if tables else np.zeros(0, bool)
    if not len(ids):
        return Mapping(ids, np.zeros(0, np.uint64), 0)
    if kind == "instances":
        joined = _contact_pairs(boundary)
        groups = _union(ids, joined)
        kept = np.ones(len(ids), bool)
    else:
        # 6-components: joined across boundaries; hysteresis keeps those holding a seed
        groups6 = _union(ids, boundary.pairs6)
        seeded = np.bincount(groups6, weights=flags, minlength=groups6.max() + 1) > 0
        kept = seeded[groups6]
        # 26-objects among kept 6-components: what the size filter counts
        pairs = np.concatenate([boundary.pairs6, boundary.pairs26, *[t.pairs26 for t in tables]])
        index = np.searchsorted(ids, pairs)
        both = kept[index[:, 0]] & kept[index[:, 1]] if len(pairs) else np.zeros(0, bool)
        groups = _union(ids, pairs[both])
    group_size = np.bincount(groups, weights=np.where(kept, sizes, 0), minlength=groups.max() + 1)
    keep = kept & (group_size[groups] >= max(int(min_size), 1))
    if min_sections > 1:  # an object's depth: from the first section of any of its labels to the last
        zmin = np.concatenate([t.zmin for t in tables])[order]
        zmax = np.concatenate([t.zmax for t in tables])[order]
        top = np.full(groups.max() + 1, np.iinfo(np.int64).max)
        bottom = np.full(groups.max() + 1, np.iinfo(np.int64).min)
        np.minimum.at(top, groups[kept], zmin[kept])
        np.maximum.at(bottom, groups[kept], zmax[kept])
        keep &= (bottom - top + 1)[groups] >= min_sections
    # final ids 1..n in order of each object's first (lowest) block label
    final = np.zeros(groups.max() + 1, np.uint64)
    first = np.unique(groups[keep], return_index=True)
    ordered = first[0][np.argsort(first[1])]
    final[ordered] = np.arange(1, len(ordered) + 1, dtype=np.uint64)
    return Mapping(ids, np.where(keep, final[groups], np.uint64(0)), len(ordered))


def _contact_pairs(boundary: Boundary) -> np.ndarray:
    """Instance pairs whose contact covers at least :data:`MIN_CONTACT` of the smaller cross-section."""
    if not len(boundary.pairs6):
        return boundary.pairs6
    # a pair lies on one boundary; both cross-sections are looked up on it
    section = {
        (int(i), int(k[0]), int(k[1])): int(s)
        for i, k, s in zip(boundary.section_ids, boundary.section_keys, boundary.section_sizes)
    }
    by_id: dict[int, set[tuple[int, int]]] = {}
    for i, axis, position in section:
        by_id.setdefault(i, set()).add((axis, position))
    keep = []
    for (a, b), contact in zip(boundary.pairs6, boundary.contacts):
        shared = by_id.get(int(a), set()) & by_id.get(int(b), set())
        smaller = min((min(section[(int(a), *k)], section[(int(b), *k)]) for k in shared), default=0)
        keep.append(smaller > 0 and contact >= MIN_CONTACT * smaller)
    return boundary.pairs6[np.asarray(keep, bool)]


def _union(ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Group index of each id (sorted ``ids``) after joining ``pairs``."""
    n = len(ids)
    if not len(pairs):
        return np.arange(n)
    index = np.searchsorted(ids, pairs)
    graph = coo_matrix((np.ones(len(index), np.int8), (index[:, 0], index[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
