"""Neurite tracing through a stack of sections, as seed 003 describes it: membrane → seeds → segments →
tracks. The ``trace`` post-processing of the membrane model (``lib.infers.postprocessing``).

1. **Seeds**, per section: maxima of the (Gaussian-smoothed, ``sigma`` pixels) distance transform of the
   non-membrane region ``p < threshold``, at least ``min_distance`` pixels apart; a non-membrane component
   without a maximum gets one seed at its deepest pixel, so every component becomes a segment.
2. **Segments**, per section: a seeded watershed on the membrane probability inside the non-membrane
   region. Segments under ``min_area`` pixels give their pixels to their neighbours (a second flood
   without their seeds). Membrane voxels stay 0, so ``label == 0`` is the thresholded membrane map.
3. **Tracks**: segments of section z are matched one-to-one with those of z + 1 by Hungarian assignment
   (``scipy.optimize.linear_sum_assignment``, per connected group of candidate pairs). The cost of a pair
   is ``(1 - IoU) / 2 + min(1, d / reach) / 2``, ``d`` the in-plane distance of their centroids in nm and
   ``reach = max_slope x z spacing`` the in-plane shift a neurite at ``max_slope`` makes from one section
   to the next: with 50 nm ssTEM sections at 4.6 nm pixels a neurite may move ~11 pixels, with 10 nm
   FIB-SEM sections ~2. Candidates overlap or lie within ``reach``; a pair costing more than ``max_cost``
   is no link, and its segments end and start tracks. One-to-one matching alone cuts a neurite wherever
   one section over-splits it or it branches, and the cuts add up through the stack (on gala FIB-SEM with
   the true boundaries: 4-5x too many objects). So a segment left without a partner joins the track of the
   segment of the neighbouring section that covers ``join_cover`` of its area (more than half: at most one).
4. **Anchors** (optional, an annotator's sparse label on the image's grid: a few voxels of some sections
   carrying neurite ids): a segment holding anchor voxels takes their most frequent id, and every track
   takes the id of the anchors it meets. A track meeting two ids is cut at its weakest link (the costliest)
   between the two anchored sections. Where one id's tracks leave sections between anchored sections
   uncovered, the gap is bridged by linear interpolation of the neurite's centroid between the sections
   either side: in each gap section, the segment under the interpolated point takes the id if no anchor
   named its track. Unanchored tracks get ids above the largest anchor id.

``mode``: ``sections`` (the above, the default) or ``3d``, meant for isotropic stacks: one 3D seeded watershed
makes the objects, with no linking, since a 10 nm section differs little from the next and a 3D flood
follows a neurite that leaves the plane at any angle. Its seeds are the ``h``-maxima of the 3D distance transform
(in in-plane pixels), not local maxima ``min_distance`` apart: along a neurite the 3D distance transform is
a ridge whose many local maxima would cut it every ``min_distance`` voxels, while h-maxima merge maxima
that rise less than ``h`` above their saddle. Anchors name its objects, and an object meeting two ids is
split by a watershed from their voxels. ``benchmarks/tracing.md`` compares both modes on isotropic FIB-SEM
and on every 5th of its sections (ssTEM-like): neither won both, so there is no automatic choice.

Defaults: what the select split of ``benchmarks/tracing.py`` chose on the membrane model's predictions
(``threshold`` comes from the membrane model's spec, 0.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

MODES = ("sections", "3d")
_UNLINKED = 1e6  # cost of a pair that is no candidate (never chosen over a candidate)


def trace(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    sigma: float = 1.0,
    min_distance: int = 4,
    min_area: int = 20,
    max_cost: float = 0.8,
    max_slope: float = 1.0,
    join_cover: float = 0.9,
    h: float = 1.0,
    mode: str = "sections",
    voxel_size_nm: Sequence[float] | None = None,
    anchors: np.ndarray | None = None,
) -> np.ndarray:
    """Neurite ids (uint32, 0 on membrane) from membrane probabilities (z, y, x); see the module docstring.

    ``voxel_size_nm``: (z, y, x); None counts voxels as isotropic.
    """
    spacing = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm is not None else (1.0, 1.0, 1.0)
    if anchors is not None and anchors.shape != probabilities.shape:
        raise ValueError(f"anchors of shape {anchors.shape} do not match the volume's {probabilities.shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "3d":
        objects = watershed_3d(probabilities, threshold, sigma, h, spacing)
        return name_objects(objects, anchors)
    segments = np.stack(
        [section_segments(section, threshold, sigma, min_distance, min_area) for section in probabilities]
    )
    links = link_sections(segments, spacing, max_slope, max_cost, join_cover)
    return name_tracks(segments, links, anchors)


# --- 1, 2: seeds and segments ----------------------------------------------------------------------------
def _distance(interior: np.ndarray, sigma: Sequence[float], sampling: Sequence[float]) -> np.ndarray:
    """Distance transform of the non-membrane region (in ``sampling`` units), Gaussian-smoothed by ``sigma``
    voxels per axis and kept at 0 on the membrane."""
    distance = ndimage.distance_transform_edt(interior, sampling=sampling)
    if any(s > 0 for s in sigma):
        distance = ndimage.gaussian_filter(distance, sigma) * interior
    return distance


def _peak_mask(peaks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(peaks.T)] = True
    return mask


def _markers(seeds: np.ndarray, components: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Markers (int32, 1..n), one per connected group of ``seeds`` voxels, plus the deepest voxel of each
    component no seed lies in (a thin sliver has no maximum ``min_distance`` from others), so every
    component is flooded."""
    markers, count = ndimage.label(seeds, np.ones((3,) * seeds.ndim, bool))
    seeded = np.zeros(int(components.max()) + 1, bool)
    seeded[components[markers > 0]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    if len(missing):
        deepest = np.asarray(ndimage.maximum_position(distance, components, missing)).reshape(len(missing), -1)
        markers[tuple(deepest.T)] = count + 1 + np.arange(len(missing))
    return markers.astype(np.int32)


def section_segments(
    section: np.ndarray, threshold: float = 0.5, sigma: float = 1.0, min_distance: int = 4, min_area: int = 20
) -> np.ndarray:
    """One section's segments (int32, 1..n, 0 on membrane): seeded watershed on the membrane probability."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    interior = section < threshold
    if not interior.any():
        return np.zeros(section.shape, np.int32)
    distance = _distance(interior, (sigma, sigma), (1.0, 1.0))
    components, _ = ndimage.label(interior)
    peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
    markers = _markers(_peak_mask(peaks, section.shape), components, distance)
    segments = watershed(section, markers, mask=interior)
    if min_area > 1 and len(peaks):
        area = np.bincount(segments.ravel())
        large = area[segments[tuple(peaks.T)]] >= min_area
        if not large.all():  # small segments' seeds go; their pixels flood from the neighbours
            markers = _markers(_peak_mask(peaks[large], section.shape), components, distance)
            segments = watershed(section, markers, mask=interior)
    return _consecutive(segments)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(labels, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)


def watershed_3d(
    probabilities: np.ndarray, threshold: float, sigma: float, h: float, spacing: Sequence[float]
) -> np.ndarray:
    """Objects (int32, 0 on membrane) of one 3D seeded watershed from the ``h``-maxima of the distance
    transform (in in-plane pixels, smoothed by ``sigma`` pixels)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    interior = probabilities < threshold
    if not interior.any():
        return np.zeros(probabilities.shape, np.int32)
    pixel = min(spacing[1:])
    sampling = tuple(s / pixel for s in spacing)
    distance = _distance(interior, tuple(sigma / s for s in sampling), sampling)
    components, _ = ndimage.label(interior)
    seeds = h_maxima(distance, h).astype(bool) & interior
    return watershed(probabilities, _markers(seeds, components, distance), mask=interior)


# --- 3: linking ------------------------------------------------------------------------------------------
def _section_stats(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and (y, x) centroid of each id 1..n of one section (row 0 unused)."""
    count = int(segments.max())
    flat = segments.ravel()
    yy, xx = np.indices(segments.shape)
    area = np.bincount(flat, minlength=count + 1).astype(float)
    centroid = (
        np.stack([np.bincount(flat, yy.ravel(), count + 1), np.bincount(flat, xx.ravel(), count + 1)], 1)
        / np.maximum(area, 1)[:, None]
    )
    return area, centroid


@dataclass(frozen=True)
class SectionLinks:
    """How the segments of section z continue in z + 1: one-to-one ``links`` (ids of z, ids of z + 1, and
    their costs), and ``joins`` of fragments left unmatched (ids of z, ids of z + 1)."""

    a: np.ndarray
    b: np.ndarray
    cost: np.ndarray
    join_a: np.ndarray
    join_b: np.ndarray


def _no_links() -> SectionLinks:
    empty = np.zeros(0, np.int32)
    return SectionLinks(empty, empty, np.zeros(0), empty, empty)


def link_sections(
    segments: np.ndarray,
    spacing: Sequence[float],
    max_slope: float = 1.0,
    max_cost: float = 0.6,
    join_cover: float = 0.9,
) -> list[SectionLinks]:
    """Per pair of consecutive sections (z, z + 1): the one-to-one links and the fragments' joins."""
    pixel = np.asarray(spacing[1:], float)
    reach = max_slope * float(spacing[0])
    links = []
    stats = [_section_stats(s) for s in segments]
    for z in range(len(segments) - 1):
        (area_a, centre_a), (area_b, centre_b) = stats[z], stats[z + 1]
        a, b = segments[z].ravel(), segments[z + 1].ravel()
        both = (a > 0) & (b > 0)
        pairs, overlap = np.unique(np.stack([a[both], b[both]], 1), axis=0, return_counts=True)
        if len(centre_a) > 1 and len(centre_b) > 1:  # non-overlapping pairs whose centroids are within reach
            # within reach plus the larger segment's radius: any pair closer may cost under 1
            far = reach + float(np.sqrt(max(area_a.max(), area_b.max()) * np.prod(pixel) / np.pi))
            near = cKDTree(centre_a[1:] * pixel).query_ball_tree(cKDTree(centre_b[1:] * pixel), far)
            close = np.array([(i + 1, j + 1) for i, js in enumerate(near) for j in js], np.int64).reshape(-1, 2)
            pairs = np.concatenate([pairs.reshape(-1, 2), close])
            overlap = np.concatenate([overlap, np.zeros(len(close), np.int64)])
            pairs, first = np.unique(pairs, axis=0, return_index=True)
            overlap = overlap[first]  # np.unique keeps the first: the counted overlap comes before zeros
        if not len(pairs):
            links.append(_no_links())
            continue
        i, j = pairs[:, 0], pairs[:, 1]
        iou = overlap / (area_a[i] + area_b[j] - overlap)
        distance = np.linalg.norm((centre_a[i] - centre_b[j]) * pixel, axis=1)
        radius = np.sqrt(np.minimum(area_a[i], area_b[j]) * float(np.prod(pixel)) / np.pi)
        cost = (1 - iou) / 2 + np.minimum(1.0, distance / (reach + radius)) / 2
        chosen = _assign(i, j, cost)
        keep = chosen & (cost <= max_cost)
        join_a, join_b = _fragment_joins(i, j, overlap, area_a, area_b, i[keep], j[keep], join_cover)
        links.append(SectionLinks(i[keep].astype(np.int32), j[keep].astype(np.int32), cost[keep], join_a, join_b))
    return links


def _fragment_joins(
    i: np.ndarray,
    j: np.ndarray,
    overlap: np.ndarray,
    area_a: np.ndarray,
    area_b: np.ndarray,
    linked_a: np.ndarray,
    linked_b: np.ndarray,
    join_cover: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where a segment left without a partner lies mostly (``join_cover`` of its area) on one
    segment of the other section: a fragment of an over-split neurite, or a branch."""
    joins = []
    for own, other, area, linked in ((j, i, area_b, linked_b), (i, j, area_a, linked_a)):
        cover = overlap / area[own]
        free = ~np.isin(own, linked) & (cover >= join_cover)
        joins.append((own[free], other[free]))
    (b_free, a_of_b), (a_free, b_of_a) = joins
    return (np.concatenate([a_of_b, a_free]).astype(np.int32), np.concatenate([b_free, b_of_a]).astype(np.int32))


def _assign(i: np.ndarray, j: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Which candidate pairs a minimum-cost one-to-one assignment takes, solved per connected group of
    candidates (a section's thousands of segments never make one dense matrix)."""
    rows, row_index = np.unique(i, return_inverse=True)
    cols, col_index = np.unique(j, return_inverse=True)
    n = len(rows) + len(cols)
    graph = coo_matrix((np.ones(len(i)), (row_index, len(rows) + col_index)), shape=(n, n))
    group = connected_components(graph, directed=False)[1][row_index]
    chosen = np.zeros(len(i), bool)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], group[order]])))
    for part in np.split(order, starts[1:]):
        r, r_inv = np.unique(row_index[part], return_inverse=True)
        c, c_inv = np.unique(col_index[part], return_inverse=True)
        matrix = np.full((len(r), len(c)), _UNLINKED)
        matrix[r_inv, c_inv] = cost[part]
        best_r, best_c = linear_sum_assignment(matrix)
        taken = {(int(x), int(y)) for x, y in zip(best_r, best_c) if matrix[x, y] < _UNLINKED}
        chosen[part] = [(int(x), int(y)) in taken for x, y in zip(r_inv, c_inv)]
    return chosen


# --- 4: tracks and anchors -------------------------------------------------------------------------------
def name_tracks(segments: np.ndarray, links: list[SectionLinks], anchors: np.ndarray | None = None) -> np.ndarray:
    """Neurite ids (uint32) of linked segments: anchors' ids where tracks meet anchors, new ids elsewhere."""
    depth = len(segments)
    counts = [int(s.max()) for s in segments]
    base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # node of (z, id) = base[z] + id - 1
    n = int(base[-1])
    successor = np.full(n, -1)
    link_cost = np.zeros(n)  # the cost of the link from a node to its successor
    for z, section in enumerate(links):
        successor[base[z] + section.a - 1] = base[z + 1] + section.b - 1
        link_cost[base[z] + section.a - 1] = section.cost
    section_of = np.repeat(np.arange(depth), counts)
    segment_of = np.concatenate([np.arange(1, c + 1) for c in counts]) if n else np.zeros(0, int)
    anchor_id = _segment_anchors(segments, anchors, base, n)
    has_predecessor = np.zeros(n, bool)
    has_predecessor[successor[successor >= 0]] = True
    piece_of = np.full(n, -1)
    names: list[int] = []  # per piece of a chain of links: its anchor id, or 0
    for start in np.flatnonzero(~has_predecessor):
        chain = [start]
        while successor[chain[-1]] >= 0:
            chain.append(successor[chain[-1]])
        for piece, name in _split_at_anchors(chain, anchor_id, link_cost):
            piece_of[piece] = len(names)
            names.append(name)
    joins = [(piece_of[base[z] + s.join_a - 1], piece_of[base[z + 1] + s.join_b - 1]) for z, s in enumerate(links)]
    track_of_piece, track_names = _join_pieces(np.asarray(names, np.int64), joins)
    first_free = int(max(track_names.max(initial=0), anchors.max() if anchors is not None and anchors.size else 0))
    unnamed = np.flatnonzero(track_names == 0)
    track_names[unnamed] = first_free + 1 + np.arange(len(unnamed))
    track_of = track_of_piece[piece_of] if n else np.zeros(0, np.int64)
    node_name = track_names[track_of] if n else np.zeros(0, np.int64)
    if anchors is not None:
        _bridge_gaps(segments, node_name, base, section_of, segment_of, np.isin(track_of, unnamed), anchor_id)
    out = np.zeros(segments.shape, np.uint32)
    for z in range(depth):
        lookup = np.concatenate([[0], node_name[base[z] : base[z + 1]]]).astype(np.uint32)
        out[z] = lookup[segments[z]]
    return out


def _join_pieces(names: np.ndarray, joins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pieces joined into tracks (union-find), except where a join would give one track two anchor ids.
    Returns each piece's track and each track's anchor id (0: none)."""
    parent = np.arange(len(names))
    name = names.copy()  # per root

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for pieces_a, pieces_b in joins:
        for u, v in zip(pieces_a, pieces_b):
            ru, rv = root(int(u)), root(int(v))
            if ru == rv or (name[ru] and name[rv] and name[ru] != name[rv]):
                continue
            parent[rv] = ru
            name[ru] = name[ru] or name[rv]
    roots = np.array([root(k) for k in range(len(names))], np.int64)
    unique_roots, track_of_piece = np.unique(roots, return_inverse=True)
    return track_of_piece, name[unique_roots].astype(np.int64)


def _segment_anchors(segments: np.ndarray, anchors: np.ndarray | None, base: np.ndarray, n: int) -> np.ndarray:
    """Each node's anchor id (its anchor voxels' most frequent id; 0 where it holds none)."""
    anchor_id = np.zeros(n, np.int64)
    if anchors is None:
        return anchor_id
    for z in np.flatnonzero(anchors.reshape(len(anchors), -1).any(axis=1)):
        where = (anchors[z] > 0) & (segments[z] > 0)
        if not where.any():
            continue
        pairs, counts = np.unique(np.stack([segments[z][where], anchors[z][where]], 1), axis=0, return_counts=True)
        order = np.lexsort((-counts, pairs[:, 0]))  # per segment, its most frequent anchor id first
        pairs = pairs[order]
        first = np.unique(pairs[:, 0], return_index=True)[1]
        anchor_id[base[z] + pairs[first, 0] - 1] = pairs[first, 1]
    return anchor_id


def _split_at_anchors(chain: list[int], anchor_id: np.ndarray, link_cost: np.ndarray) -> list[tuple[list[int], int]]:
    """A track's pieces with their anchor ids: cut at the costliest link between sections anchored with
    different ids; a piece with no anchor is named 0."""
    anchored = [(k, int(anchor_id[node])) for k, node in enumerate(chain) if anchor_id[node]]
    cuts = []
    for (k0, id0), (k1, id1) in zip(anchored, anchored[1:]):
        if id0 != id1:  # links k0→k0+1 ... k1-1→k1; cut after the costliest
            costs = [link_cost[chain[k]] for k in range(k0, k1)]
            cuts.append(k0 + int(np.argmax(costs)) + 1)
    pieces, start = [], 0
    for cut in [*cuts, len(chain)]:
        piece = chain[start:cut]
        ids = [int(anchor_id[node]) for node in piece if anchor_id[node]]
        pieces.append((piece, ids[0] if ids else 0))
        start = cut
    return pieces


def _bridge_gaps(
    segments: np.ndarray,
    node_name: np.ndarray,
    base: np.ndarray,
    section_of: np.ndarray,
    segment_of: np.ndarray,
    unanchored: np.ndarray,
    anchor_id: np.ndarray,
) -> None:
    """Give anchor ids to segments of unanchored tracks under the interpolated centroid of a gap."""
    for name in np.unique(anchor_id[anchor_id > 0]):
        nodes = np.flatnonzero((node_name == name) & ~unanchored)
        sections = np.unique(section_of[nodes])
        for z0, z1 in zip(sections, sections[1:]):
            if z1 - z0 < 2:
                continue
            c0 = _centroid(segments[z0], segment_of[nodes[section_of[nodes] == z0]])
            c1 = _centroid(segments[z1], segment_of[nodes[section_of[nodes] == z1]])
            for z in range(z0 + 1, z1):
                t = (z - z0) / (z1 - z0)
                y, x = np.rint((1 - t) * c0 + t * c1).astype(int)
                segment = int(segments[z][y, x])
                node = base[z] + segment - 1
                if segment and unanchored[node]:
                    node_name[node] = name


def _centroid(section: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.argwhere(np.isin(section, ids)).mean(axis=0)


def name_objects(objects: np.ndarray, anchors: np.ndarray | None) -> np.ndarray:
    """3D objects as neurite ids (uint32): anchor ids where objects meet anchors (an object meeting two ids
    is split by a watershed from their voxels inside it), new ids above the largest anchor id elsewhere."""
    from skimage.segmentation import watershed

    out = np.zeros(objects.shape, np.uint32)
    first_free = int(anchors.max()) if anchors is not None and anchors.size else 0
    anchored = np.zeros(int(objects.max()) + 1, bool)
    if anchors is not None:
        boxes = ndimage.find_objects(objects)  # each object is looked at inside its own box only
        for obj in np.unique(objects[(anchors > 0) & (objects > 0)]):
            box = boxes[obj - 1]
            inside = objects[box] == obj
            seeds = np.where(inside, anchors[box], 0)
            anchored[obj] = True
            ids = np.unique(seeds[seeds > 0])
            if len(ids) == 1:
                out[box][inside] = ids[0]
            else:
                out[box][inside] = watershed(np.zeros(seeds.shape), seeds, mask=inside)[inside]
    rest = np.flatnonzero(~anchored[1:]) + 1
    lookup = np.zeros(len(anchored), np.uint32)
    lookup[rest] = first_free + 1 + np.arange(len(rest))
    free = ~anchored[objects] & (objects > 0)
    out[free] = lookup[objects[free]]
    return out
