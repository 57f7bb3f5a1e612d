"""MONAI's sliding-window inference, one block at a time, with the same result as one pass over the volume.

``monai.inferers.sliding_window_inference`` pads a volume smaller than the window (replicate), places
windows on a lattice (stride ``int(patch * (1 - overlap))``, the last window of each axis moved back to
end at the volume's edge), adds each window's logits times a Gaussian importance map, and divides by
the summed map. :class:`WindowLattice` is that lattice for a whole domain; :func:`block_logits` runs,
for one write block, exactly the windows of the lattice that touch it, in the lattice's order, so each
voxel's sums are the same sums in the same order as in one pass (adding the zero contributions of the
other windows changes no float). What can differ is the network's own arithmetic on another batch of
windows (BLAS kernels chosen by batch size); ``tests/test_blockwise.py`` measures it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval, compute_importance_map

from ..regions import Roi, Shape, zyx

# MONAI's default Gaussian width (sigma = 0.125 x window).
SIGMA_SCALE = 0.125


@dataclass(frozen=True)
class WindowLattice:
    """The windows MONAI would place over a domain of ``shape`` (voxels, z, y, x)."""

    shape: Shape
    patch: Shape
    overlap: float

    @property
    def pad_before(self) -> Shape:
        """Replicate padding before each axis (MONAI pads only axes shorter than the window, half each side)."""
        return zyx(max(p - s, 0) // 2 for s, p in zip(self.shape, self.patch))

    @property
    def padded_shape(self) -> Shape:
        return zyx(max(s, p) for s, p in zip(self.shape, self.patch))

    def starts(self) -> list[list[int]]:
        """Window starts per axis, in padded coordinates (MONAI's ``dense_patch_slices``)."""
        interval = _get_scan_interval(self.padded_shape, self.patch, 3, (self.overlap,) * 3)
        slices = dense_patch_slices(self.padded_shape, self.patch, interval)
        return [sorted({s[axis].start for s in slices}) for axis in range(3)]

    def windows_touching(self, roi: Roi) -> list[Shape]:
        """Starts (padded coordinates) of the windows that overlap ``roi`` (domain coordinates), in MONAI's
        order (z-major)."""
        per_axis: list[list[int]] = []
        for axis, starts in enumerate(self.starts()):
            lo = roi.offset[axis] + self.pad_before[axis]
            hi = lo + roi.shape[axis]
            per_axis.append([s for s in starts if s < hi and s + self.patch[axis] > lo])
        return [zyx(start) for start in itertools.product(*per_axis)]

    def read_roi(self, roi: Roi) -> Roi:
        """The padded-coordinate box the windows touching ``roi`` cover (what a block must read)."""
        windows = self.windows_touching(roi)
        start = (min(w[a] for w in windows) for a in range(3))
        end = (max(w[a] for w in windows) + self.patch[a] for a in range(3))
        return Roi.between(start, end)


def importance_map(patch: Shape, device: str | torch.device) -> torch.Tensor:
    return compute_importance_map(patch, mode="gaussian", sigma_scale=SIGMA_SCALE, device=device)


def read_padded(read: Callable[[Roi], np.ndarray], lattice: WindowLattice, padded_roi: Roi) -> np.ndarray:
    """Voxels of ``padded_roi`` (padded coordinates): the domain part read with ``read`` (domain
    coordinates), the padding replicated from the edge as MONAI pads."""
    start = [o - p for o, p in zip(padded_roi.offset, lattice.pad_before)]
    end = [s + n for s, n in zip(start, padded_roi.shape)]
    lo = [max(0, s) for s in start]
    hi = [min(d, e) for d, e in zip(lattice.shape, end)]
    array = read(Roi.between(lo, hi))
    pad = [(b - s, e - h) for s, b, e, h in zip(start, lo, end, hi)]
    return np.pad(array, pad, mode="edge") if any(p for pair in pad for p in pair) else array


@torch.no_grad()
def block_logits(
    network: torch.nn.Module,
    image: np.ndarray,
    image_roi: Roi,
    lattice: WindowLattice,
    write_roi: Roi,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    autocast: bool = False,
) -> np.ndarray:
    """Blended logits of ``write_roi`` (domain coordinates) from the windows of ``lattice`` touching it.

    ``image``: the normalised volume of ``image_roi`` (padded coordinates), at least
    ``lattice.read_roi(write_roi)``. ``autocast``: bfloat16 on CUDA (faster, no longer identical to a
    float32 pass).
    """
    windows = lattice.windows_touching(write_roi)
    out_roi = write_roi.shift(lattice.pad_before)
    weight = importance_map(lattice.patch, device)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    total = torch.zeros(write_roi.shape, dtype=torch.float32, device=device)
    count = torch.zeros(write_roi.shape, dtype=torch.float32, device=device)
    network.eval()
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        crops = [
            tensor[tuple(slice(s - o, s - o + p) for s, o, p in zip(w, image_roi.offset, lattice.patch))] for w in batch
        ]
        # one window: a view into the volume, as MONAI passes it (the same memory layout, the same kernels)
        inputs = crops[0][None, None] if len(crops) == 1 else torch.stack(crops)[:, None]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and str(device).startswith("cuda")):
            logits = network(inputs)
        logits = logits.float() * weight
        for window, window_logits in zip(batch, logits[:, 0]):
            # the part of the window inside the write block, in window and in block coordinates
            lo = [max(s, o) for s, o in zip(window, out_roi.offset)]
            hi = [min(s + p, e) for s, p, e in zip(window, lattice.patch, out_roi.end)]
            in_window = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, window))
            in_block = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, out_roi.offset))
            total[in_block] += window_logits[in_window]
            count[in_block] += weight[in_window]
    return (total / count).cpu().numpy()


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid, as ``predict.sliding_window_probabilities`` applies it (torch, float32)."""
    return torch.sigmoid(torch.from_numpy(logits)).numpy()
