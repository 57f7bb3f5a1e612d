"""Whole-volume prediction as plain functions (no MONAI Label objects), used by infer and training."""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from ..configs.spec import StructureSpec
from ..transforms.intensity import normalize_percentiles


def predict_probabilities(
    network: torch.nn.Module,
    array: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Foreground probability for every voxel of a raw (z, y, x) volume, as float32."""
    return sliding_window_probabilities(network, normalize_percentiles(array, spec.percentiles), spec, device)


@torch.no_grad()
def sliding_window_probabilities(
    network: torch.nn.Module,
    image: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 2,
) -> np.ndarray:
    """Probabilities for an already-normalised float32 volume.

    Uses Gaussian-weighted sliding windows of ``spec.patch_size`` with ``spec.overlap``; volumes
    smaller than a window are padded by MONAI and cropped back.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    network.eval()
    logits = sliding_window_inference(
        tensor,
        roi_size=spec.patch_size,
        sw_batch_size=sw_batch_size,
        predictor=network,
        overlap=spec.overlap,
        mode="gaussian",
    )
    return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def postprocess(probabilities: np.ndarray, threshold: float, min_size: int = 0) -> np.ndarray:
    """Threshold, then drop connected components under ``min_size`` voxels; returns uint8 0/1."""
    binary = probabilities > threshold
    if min_size > 0 and binary.any():
        components, count = ndimage.label(binary)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        binary = keep[components]
    return binary.astype(np.uint8)


def segment(
    network: torch.nn.Module,
    array: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
    threshold: float | None = None,
    min_size: int | None = None,
) -> np.ndarray:
    """Label volume (uint8, 1 = ``spec.label_name``) for a raw (z, y, x) volume; ``threshold`` and
    ``min_size`` default to the spec's."""
    probabilities = predict_probabilities(network, array, spec, device)
    return postprocess(
        probabilities,
        spec.threshold if threshold is None else threshold,
        spec.min_size if min_size is None else min_size,
    )
