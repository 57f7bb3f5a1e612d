"""Whole-volume segmentation in four steps, each a function of plain data that any worker can run.

1. :func:`predict_block` (one per write block): read the block's windows from the store, predict them
   (:mod:`.windows`), write uint8 probabilities and the block's labels (:mod:`.components`).
2. :func:`stitch` (once): join labels across block boundaries; one mapping to final object ids.
3. :func:`relabel_block` (one per write block): write the block's labels and instance ids.
4. :func:`build_pyramid` (one per output): its downsampled levels, for viewers.

:func:`segment_volume` runs all four in one process (tests, benchmarks); ``lib.jobs.volume_steps`` runs them on
the queue. What they run on is planned in :mod:`.plan`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...configs.spec import StructureSpec
from ...infers.postprocessing import structure_mask
from ..outputs import OUTPUTS, VolumeOutput
from ..regions import Roi, Shape
from .components import BlockTable, Mapping, boundary_pairs
from .components import resolve as resolve_components
from .plan import BlockPlan, Postprocess
from .windows import WindowLattice, block_logits, probabilities, read_padded


def lattice_of(plan: BlockPlan, spec: StructureSpec) -> WindowLattice:
    return WindowLattice(plan.domain.shape, spec.patch_size, spec.overlap)


def predict_block(
    plan: BlockPlan,
    index: int,
    spec: StructureSpec,
    post: Postprocess,
    read_image: Callable[[Roi], np.ndarray],
    network: torch.nn.Module,
    output: VolumeOutput,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    autocast: bool = False,
) -> str:
    """Step 1 for block ``index``; ``read_image(roi)``: normalised float32 voxels of an image box. Returns
    the checksum of what it wrote."""
    write = plan.blocks()[index]
    lattice = lattice_of(plan, spec)
    predicted = plan.in_domain(write).grow(post.margin, plan.domain.shape)
    read_roi = lattice.read_roi(predicted)

    def read_domain(roi: Roi) -> np.ndarray:
        return read_image(roi.shift(plan.domain.offset))

    image = read_padded(read_domain, lattice, read_roi)
    p = probabilities(block_logits(network, image, read_roi, lattice, predicted, device, batch_size, autocast))
    inner = plan.in_domain(write).relative_to(predicted)
    labels, table = post.block_labels(index, p, inner, z0=write.offset[0])
    table.save(output.table_path(index))
    return output.write(write, {"probabilities": np.rint(p[inner] * 255), "blocks": labels})


def stitch(plan: BlockPlan, post: Postprocess, output: VolumeOutput) -> dict[str, Any]:
    """Step 2: the mapping from block labels to object ids, saved for step 3."""
    start = time.time()
    tables = [BlockTable.load(output.table_path(i)) for i in range(len(plan.blocks()))]
    blocks = output.array("blocks")
    offset = plan.domain.offset

    def read(slices: tuple[slice, ...]) -> np.ndarray:
        return blocks[tuple(slice(s.start + o, s.stop + o) for s, o in zip(slices, offset))]

    boundary = boundary_pairs(read, plan.domain.shape, plan.block)
    mapping = resolve_components(tables, boundary, post.kind, post.min_size, post.min_sections)
    mapping.save(output.mapping)
    return {
        "objects": mapping.count,
        "block_labels": int(len(mapping.keys)),
        "joined_across_blocks": int(len(boundary.pairs6)),
        "seconds": round(time.time() - start, 3),
    }


def relabel_block(plan: BlockPlan, index: int, post: Postprocess, output: VolumeOutput) -> str:
    """Step 3 for block ``index``: object ids and the structure's mask from the mapping."""
    write = plan.blocks()[index]
    instances = Mapping.load(output.mapping, index).apply(output.array("blocks")[write.slices])
    return output.write(write, {"instances": instances, "labels": structure_mask(instances, post.method)})


def build_pyramid(output: VolumeOutput, name: str, factors: Shape, voxel_size_um) -> list:
    """Step 4 for output ``name`` (each output is one unit of work)."""
    return output.build_pyramid(name, factors, voxel_size_um)


def segment_volume(
    plan: BlockPlan,
    spec: StructureSpec,
    post: Postprocess,
    read_image: Callable[[Roi], np.ndarray],
    network: torch.nn.Module,
    output: VolumeOutput,
    voxel_size_um: tuple[float, float, float] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    pyramid_factors: Shape = (2, 2, 2),
    autocast: bool = False,
) -> dict[str, Any]:
    """All four steps in this process, one block after another."""
    output.create(plan.image_shape, plan.chunks, voxel_size_um)
    for index in range(len(plan.blocks())):
        predict_block(plan, index, spec, post, read_image, network, output, device, batch_size, autocast)
    summary = stitch(plan, post, output)
    for index in range(len(plan.blocks())):
        relabel_block(plan, index, post, output)
    summary["levels"] = {name: build_pyramid(output, name, pyramid_factors, voxel_size_um) for name in OUTPUTS}
    output.drop_work()
    return summary
