"""What a whole-volume job will compute: its write blocks, its post-processing and its checked request.

:class:`BlockPlan` says which blocks there are; :class:`Postprocess` what the prediction step computes for the
structure's post-processing (:mod:`.steps` runs the steps).

A whole-volume request (:class:`VolumeRequest`, checked before anything is planned or queued) takes the
post-processing options (``lib.infers.postprocessing``, no ``skeleton``), ``tta`` 1 only, ``device``, and:

- ``roi``: ``{"offset": [z, y, x], "shape": [z, y, x]}``, integers, a non-empty box inside the image.
- ``block_shape``: three integers >= 1; at most :data:`MAX_BLOCK_MVOX` Mvox inside the image (a block's
  buffers are about ``4 B x (2 x read + 6 x write voxels)``: ~5 GB at 128 Mvox, 8x the default block).
- ``blocks_per_job``: an integer in [0, 1024], 0 choosing about :data:`JOB_MVOX` per queue job (a queue
  job holds its worker until all its blocks are done).
- ``sw_batch_size``: windows per forward pass, an integer in [1, 32] (16x the default 2; the network's
  activations grow with it, the speed hardly).
- ``amp``: true or false (bfloat16 autocast on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...configs.spec import StructureSpec
from ...errors import InvalidRequest
from ...infers.postprocessing import bilateral, resolve, watershed
from ...infers.predict import check_tta
from ...infers.tracing import trace
from ...machine import check_device
from ...params import Range, boolean, box, shown
from ..regions import Roi, Shape, align, grid, zyx
from .components import BlockTable, label_block

# A write block is at least this many windows along each axis, then grown to about this many voxels.
DEFAULT_BLOCK_MVOX = 16.0
# Blocks are queued in jobs of about this many voxels, so one job's fixed cost (queue, model check,
# SQL) stays under a few percent of its work.
JOB_MVOX = 16.0
# The largest write block a request may ask for (block_shape), and its other bounds (module docstring).
MAX_BLOCK_MVOX = 128.0
BLOCKS_PER_JOB = Range(0, 1024, integer=True)
SW_BATCH_SIZE = Range(1, 32, integer=True)
# Options of a whole-volume request besides the post-processing's.
REQUEST_OPTIONS = ("tta", "device", "postprocessing", "roi", "block_shape", "blocks_per_job", "sw_batch_size", "amp")


@dataclass(frozen=True)
class BlockPlan:
    """The write blocks of a job: a chunk-aligned ``domain`` of an image cut into ``block``-sized boxes."""

    image_shape: Shape
    domain: Roi
    block: Shape
    chunks: Shape
    blocks_per_job: int

    @classmethod
    def make(
        cls,
        image_shape: Shape,
        chunks: Shape,
        patch: Shape,
        roi: Roi | None = None,
        block: Shape | None = None,
        block_mvox: float = DEFAULT_BLOCK_MVOX,
        job_mvox: float = JOB_MVOX,
    ) -> BlockPlan:
        """``roi``: part of the image (grown to whole chunks); ``block``: rounded up to whole chunks, else
        chosen: two windows a side at least, then doubled along the axis with fewest windows until about
        ``block_mvox``."""
        roi = roi or Roi.whole(image_shape)
        start = (o // c * c for o, c in zip(roi.offset, chunks))
        end = (min(s, math.ceil(e / c) * c) for e, c, s in zip(roi.end, chunks, image_shape))
        domain = Roi.between(start, end)
        if block is None:
            size = list(align(zyx(2 * p for p in patch), chunks))
            while math.prod(size) < block_mvox * 1e6 and any(s < d for s, d in zip(size, domain.shape)):
                growable = [a for a in range(3) if size[a] < domain.shape[a]]
                axis = min(growable, key=lambda a: size[a] / patch[a])
                size[axis] *= 2
            block = zyx(size)
        block = zyx(min(b, d) for b, d in zip(align(block, chunks), align(domain.shape, chunks)))
        per_job = max(1, round(job_mvox * 1e6 / math.prod(block)))
        return cls(zyx(image_shape), domain, block, zyx(chunks), per_job)

    def blocks(self) -> list[Roi]:
        """Write blocks in image coordinates, z-major."""
        return [b.shift(self.domain.offset) for b in grid(self.domain.shape, self.block)]

    def in_domain(self, roi: Roi) -> Roi:
        return roi.shift(-d for d in self.domain.offset)

    def batches(self) -> list[list[int]]:
        count = len(self.blocks())
        return [list(range(i, min(count, i + self.blocks_per_job))) for i in range(0, count, self.blocks_per_job)]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "domain": self.domain.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockPlan:
        domain = Roi(zyx(data["domain"]["offset"]), zyx(data["domain"]["shape"]))
        return cls(zyx(data["image_shape"]), domain, zyx(data["block"]), zyx(data["chunks"]), data["blocks_per_job"])


@dataclass(frozen=True)
class Postprocess:
    """The structure's post-processing, as the blocks compute it (``options`` complete, as resolved).

    ``voxel_size_nm``: the image's (``trace`` measures in nm; whole-volume images are on the model's grid).
    """

    method: str
    options: dict[str, Any]
    voxel_size_nm: tuple[float, ...] | None = None

    @classmethod
    def of(cls, spec: StructureSpec, method: str | None = None, **overrides: Any) -> Postprocess:
        method, options = resolve(spec, method, **overrides)
        if options.get("skeleton"):
            raise InvalidRequest(
                "skeleton=true is not available for whole volumes (block-wise skeletons are not built)"
            )
        return cls(method, options, spec.voxel_size_nm)

    @property
    def kind(self) -> str:
        return "instances" if self.method in ("watershed", "trace") else "components"

    @property
    def min_size(self) -> int:
        return int(self.options.get("min_size", 0))

    @property
    def min_sections(self) -> int:
        return int(self.options.get("min_sections", 1))

    @property
    def margin(self) -> Shape:
        """Probabilities needed beyond the write block: the bilateral filter's window and the opening's
        reach in-plane; the watershed's distance transform sees ``3 x min_distance`` around."""
        if self.method == "bilateral":
            sigma = float(self.options["sigma_spatial"])
            reach = max(5, 2 * math.ceil(3 * sigma) + 1) // 2 + 2 * int(self.options["radius"]) + 1
            return (0, reach, reach)
        if self.method in ("watershed", "trace"):
            reach = 3 * int(self.options["min_distance"]) + 8
            if self.method == "trace" and self.options["mode"] == "sections":  # tracks cross z faces by contact
                return (0, reach, reach)
            return (reach, reach, reach)
        return (0, 0, 0)

    def block_labels(
        self, index: int, p: np.ndarray, inner: tuple[slice, ...], z0: int = 0
    ) -> tuple[np.ndarray, BlockTable]:
        """The block's labels and table from probabilities ``p`` of the block with its margin (``z0``: the
        write block's first section in the volume)."""
        o = self.options
        if self.method == "threshold":
            return label_block(index, mask=p[inner] > o["threshold"], z0=z0)
        if self.method == "hysteresis":
            if not o["low"] < o["high"]:
                raise ValueError(f"hysteresis needs low < high, got low {o['low']}, high {o['high']}")
            return label_block(index, mask=p[inner] > o["low"], high=p[inner] > o["high"], z0=z0)
        if self.method == "objects":  # the peak rule is hysteresis' flag; size and depth are counted after stitching
            return label_block(index, mask=p[inner] > o["threshold"], high=p[inner] >= o["min_peak"], z0=z0)
        if self.method == "bilateral":
            mask = bilateral(p, o["threshold"], o["sigma_color"], o["sigma_spatial"], int(o["radius"]))
            return label_block(index, mask=mask[inner].astype(bool), z0=z0)
        if self.method == "trace":  # tracks are joined across block faces by contact (lib.volumes.blocks.components)
            return label_block(index, instances=trace(p, **o, voxel_size_nm=self.voxel_size_nm)[inner], z0=z0)
        # watershed without its size filter: sizes are counted over the whole volume after stitching
        instances = watershed(p, o["threshold"], 0, int(o["min_distance"]), instances=True)
        return label_block(index, instances=instances[inner], z0=z0)


def parse_roi(value: Any, image_shape: Shape) -> Roi | None:
    """A request's ``roi``: a non-empty box of whole voxels inside an image of ``image_shape``."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"offset", "shape"}:
        raise InvalidRequest(f'roi must be {{"offset": [z, y, x], "shape": [z, y, x]}} in voxels, not {shown(value)}')
    inside = f" (a box inside the image of {list(image_shape)} voxels"
    z, y, x = (Range(0, s - 1, integer=True) for s in image_shape)
    offset = box("roi offset", value["offset"], (z, y, x), inside + ")")
    z, y, x = (Range(1, s - o, integer=True) for s, o in zip(image_shape, offset))
    shape = box("roi shape", value["shape"], (z, y, x), f"{inside}, from offset {list(offset)})")
    return Roi(offset, shape)


@dataclass(frozen=True)
class VolumeRequest:
    """A whole-volume request's options, checked against their bounds (module docstring)."""

    post: Postprocess
    roi: Roi | None
    block: Shape | None
    blocks_per_job: int  # 0: chosen by BlockPlan.make
    sw_batch_size: int
    amp: bool
    device: str  # "auto" or a torch device

    @classmethod
    def parse(cls, spec: StructureSpec, request: dict[str, Any], image_shape: Shape) -> VolumeRequest:
        """InvalidRequest names the first option out of bounds; keys that are neither these options nor
        the post-processing's are refused too (``client_id`` is let through)."""
        if check_tta(request.get("tta", 1)) != 1:
            raise InvalidRequest(f"whole-volume jobs run without test-time augmentation (tta 1), not {request['tta']}")
        known = (*REQUEST_OPTIONS, "client_id")
        post = Postprocess.of(
            spec, request.get("postprocessing"), **{k: v for k, v in request.items() if k not in known}
        )
        block: Shape | None = None
        if request.get("block_shape") is not None:
            block = box("block_shape", request["block_shape"], Range(1, 65536, integer=True))
            voxels = math.prod(min(b, s) for b, s in zip(block, image_shape))
            if voxels > MAX_BLOCK_MVOX * 1e6:
                raise InvalidRequest(
                    f"block_shape {list(block)} is {voxels / 1e6:g} Mvox inside the image; at most "
                    f"{MAX_BLOCK_MVOX:g} Mvox (a block's buffers are held in memory)"
                )
        return cls(
            post=post,
            roi=parse_roi(request.get("roi"), image_shape),
            block=block,
            blocks_per_job=BLOCKS_PER_JOB.check("blocks_per_job", _or(request.get("blocks_per_job"), 0)),
            sw_batch_size=SW_BATCH_SIZE.check("sw_batch_size", _or(request.get("sw_batch_size"), 2)),
            amp=boolean("amp", _or(request.get("amp"), True)),
            device=check_device(request.get("device")),
        )


def _or(value: Any, default: Any) -> Any:
    """An option sent as null takes its default."""
    return default if value is None else value
