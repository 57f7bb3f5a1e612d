"""Intensity normalisation shared by training and inference (they must match exactly)."""

from __future__ import annotations

import numpy as np

# Percentiles are estimated on at most this many voxels: exact enough, and O(1) memory in volume size.
_PERCENTILE_SAMPLE = 4_000_000


def normalize_percentiles(array: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the [lower, upper] percentiles of ``array`` to [0, 1] (clipped), as float32.

    Percentiles come from a strided subsample so that large volumes stay cheap.
    """
    step = max(1, int(np.ceil((array.size / _PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = np.asarray(array[::step, ::step, ::step], dtype=np.float32)
    finite = sample[np.isfinite(sample)]
    lower, upper = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
    if upper <= lower:
        upper = lower + 1.0
    out = (np.nan_to_num(np.asarray(array, dtype=np.float32), nan=float(lower)) - lower) / (upper - lower)
    return np.clip(out, 0.0, 1.0, out=out)
