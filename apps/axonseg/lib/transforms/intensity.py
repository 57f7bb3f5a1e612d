"""Intensity normalisation shared by training, inference, scoring and evaluation (they must match exactly).

Each image's statistics are computed once, from a fixed strided subsample of the *whole* image
(every ``step``-th voxel along each axis), and every region of it is normalised with them: a
region's normalised voxels are the same whether it is read alone, with context, or as part of the
whole volume. The datastore computes them at ingest while streaming the volume
(:class:`StatsAccumulator`); arrays that are a whole image in memory use :func:`intensity_stats`,
which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Percentiles are estimated on at most this many voxels: exact enough, and O(1) memory in volume size.
_PERCENTILE_SAMPLE = 4_000_000
# Stored for every image; the structures' recipes choose among them (``StructureSpec.percentiles``).
STORED_PERCENTILES = (0.1, 0.5, 1.0, 2.0, 50.0, 98.0, 99.0, 99.5, 99.9)


def subsample_step(shape: tuple[int, ...]) -> int:
    """The stride that leaves at most ``_PERCENTILE_SAMPLE`` voxels of a volume of ``shape``."""
    size = float(np.prod(shape))
    return max(1, int(np.ceil((size / _PERCENTILE_SAMPLE) ** (1 / 3))))


@dataclass(frozen=True)
class IntensityStats:
    """An image's intensity statistics: ``percentiles`` maps a percentile (as text, "99.5") to a value."""

    percentiles: dict[str, float]
    mean: float = 0.0
    minimum: float = 0.0
    maximum: float = 1.0
    step: int = 1
    samples: int = 0

    def bounds(self, percentiles: tuple[float, float]) -> tuple[float, float]:
        try:
            lower, upper = (self.percentiles[_key(p)] for p in percentiles)
        except KeyError as e:
            raise ValueError(f"percentile {e} not stored; stored: {sorted(self.percentiles)}") from None
        return float(lower), float(upper) if upper > lower else float(lower) + 1.0

    def has_all_percentiles(self) -> bool:
        return all(_key(p) in self.percentiles for p in STORED_PERCENTILES)

    def to_json(self) -> dict[str, Any]:
        return {
            "percentiles": self.percentiles,
            "mean": self.mean,
            "min": self.minimum,
            "max": self.maximum,
            "step": self.step,
            "samples": self.samples,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> IntensityStats:
        return cls(
            {str(k): float(v) for k, v in value["percentiles"].items()},
            float(value.get("mean", 0.0)),
            float(value.get("min", 0.0)),
            float(value.get("max", 1.0)),
            int(value.get("step", 1)),
            int(value.get("samples", 0)),
        )


def _key(percentile: float) -> str:
    return f"{float(percentile):g}"


def stats_from_sample(sample: np.ndarray, step: int) -> IntensityStats:
    finite = np.asarray(sample, dtype=np.float32).ravel()
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return IntensityStats({_key(p): float(i) for i, p in enumerate(STORED_PERCENTILES)}, step=step)
    values = np.percentile(finite, STORED_PERCENTILES)
    return IntensityStats(
        {_key(p): float(v) for p, v in zip(STORED_PERCENTILES, values)},
        float(finite.mean(dtype=np.float64)),  # a float32 sum overflows to inf near float32's maximum
        float(finite.min()),
        float(finite.max()),
        step,
        int(finite.size),
    )


def intensity_stats(array: np.ndarray) -> IntensityStats:
    """Statistics of a whole image held in memory (the same subsample the ingest stream takes)."""
    step = subsample_step(array.shape)
    return stats_from_sample(np.asarray(array[::step, ::step, ::step]), step)


class StatsAccumulator:
    """Collects the strided subsample of an image tile by tile (tiles may come in any order)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.step = subsample_step(shape)
        self._parts: list[np.ndarray] = []

    def add(self, tile: np.ndarray, offset: tuple[int, int, int]) -> None:
        """Add the subsample voxels inside ``tile``, which starts at ``offset`` in the image."""
        s = self.step
        first = tuple((-o) % s for o in offset)  # the first global multiple of ``step`` in the tile
        self._parts.append(np.asarray(tile[first[0] :: s, first[1] :: s, first[2] :: s], dtype=np.float32).ravel())

    def stats(self) -> IntensityStats:
        sample = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        return stats_from_sample(sample, self.step)


def normalize(
    array: np.ndarray, stats: IntensityStats, percentiles: tuple[float, float], ceiling: float = 1.0
) -> np.ndarray:
    """Map the image's ``percentiles`` (lower, upper) to 0 and 1, clipped to [0, ``ceiling``], as float32.

    An upper percentile of 50 (the median) with ``ceiling`` > 1 is background-referenced: sparse
    fluorescence (axons) has mostly background, so the median is background whatever the signal,
    and a voxel twice as far above the dark level as the background reads 2 in any acquisition,
    half as bright or not (an affine change of the intensities changes nothing).
    """
    lower, upper = stats.bounds(percentiles)
    out = (np.nan_to_num(np.asarray(array, dtype=np.float32), nan=lower) - lower) / (upper - lower)
    return np.clip(out, 0.0, ceiling, out=out)


def normalize_percentiles(array: np.ndarray, percentiles: tuple[float, float], ceiling: float = 1.0) -> np.ndarray:
    """Normalise an array that is a whole image by its own statistics."""
    return normalize(array, intensity_stats(array), percentiles, ceiling)
