"""Label mapping for training: raw annotation values → binary target plus a loss mask."""

from __future__ import annotations

import numpy as np


def map_labels(label: np.ndarray, label_map: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(target, mask)``: target is 1 where ``label_map`` says foreground, mask marks the
    voxels the loss may see. Values missing from ``label_map`` (e.g. TRAILMAP 0 = unlabelled) are
    masked out, so sparse annotations never teach the model that unlabelled means background.
    """
    target = np.zeros(label.shape, dtype=np.uint8)
    mask = np.zeros(label.shape, dtype=bool)
    for value, cls in label_map.items():
        hit = label == value
        mask |= hit
        if cls:
            target[hit] = 1
    return target, mask
