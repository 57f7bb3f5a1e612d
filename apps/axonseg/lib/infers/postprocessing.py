"""From foreground probabilities to a label, per structure. Each method is a plain function of
``(probabilities, **options)``; a structure's spec names its default method and options, and an infer
request may override both (they are listed in the model's infer config).

- ``threshold``: threshold, drop connected components under ``min_size`` voxels (synapses: a size filter).
- ``hysteresis``: components above ``low`` that contain a voxel above ``high``, then a size filter
  (axons; ExLLSM's defaults are high 0.98, low 0.2, 1000 voxels).
  Both take ``skeleton=True`` to return the 3D skeleton (centre lines of axons, for tracing and
  counting) instead of the mask.
- ``watershed``: instances split by a watershed on the distance transform from its maxima
  (``min_distance`` apart), small instances removed (mitochondria); ``instances=True`` returns ids.
- ``bilateral``: an in-plane bilateral filter of the probabilities, threshold, then erosion and dilation
  by ``radius`` in-plane (membranes, as in seed 003).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from scipy import ndimage

from ..configs.spec import StructureSpec

_FULL = np.ones((3, 3, 3), dtype=bool)


def remove_small(binary: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 26-connected components under ``min_size`` voxels."""
    if min_size <= 0 or not binary.any():
        return binary
    components, count = ndimage.label(binary, _FULL)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def _mask_or_skeleton(binary: np.ndarray, skeleton: bool) -> np.ndarray:
    if skeleton:
        from skimage.morphology import skeletonize

        binary = skeletonize(binary)
    return binary.astype(np.uint8)


def threshold(
    probabilities: np.ndarray, threshold: float = 0.5, min_size: int = 0, skeleton: bool = False
) -> np.ndarray:
    return _mask_or_skeleton(remove_small(probabilities > threshold, int(min_size)), skeleton)


def hysteresis(
    probabilities: np.ndarray, high: float = 0.98, low: float = 0.2, min_size: int = 1000, skeleton: bool = False
) -> np.ndarray:
    from skimage.filters import apply_hysteresis_threshold

    if not low < high:
        raise ValueError(f"hysteresis needs low < high, got low {low}, high {high}")
    binary = apply_hysteresis_threshold(probabilities, low, high)
    return _mask_or_skeleton(remove_small(binary, int(min_size)), skeleton)


def watershed(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 200,
    min_distance: int = 5,
    instances: bool = False,
) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed as skimage_watershed

    binary = probabilities > threshold
    if not binary.any():
        return np.zeros(binary.shape, np.uint16 if instances else np.uint8)
    distance = ndimage.distance_transform_edt(binary)
    components, _ = ndimage.label(binary, _FULL)
    peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
    markers = np.zeros(binary.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = skimage_watershed(-distance, markers, mask=binary)
    sizes = np.bincount(labels.ravel())
    small = sizes < int(min_size)
    small[0] = True
    labels[small[labels]] = 0
    if instances:
        return labels.astype(np.uint16)
    return (labels > 0).astype(np.uint8)


def bilateral(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    sigma_color: float = 0.1,
    sigma_spatial: float = 1.0,
    radius: int = 1,
) -> np.ndarray:
    from skimage.restoration import denoise_bilateral

    smoothed = np.stack(
        [denoise_bilateral(plane, sigma_color=sigma_color, sigma_spatial=sigma_spatial) for plane in probabilities]
    )
    binary = smoothed > threshold
    if radius > 0:
        disk = np.zeros((1, 2 * radius + 1, 2 * radius + 1), bool)
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        disk[0] = yy**2 + xx**2 <= radius**2
        binary = ndimage.binary_dilation(ndimage.binary_erosion(binary, disk), disk)
    return binary.astype(np.uint8)


METHODS = {"threshold": threshold, "hysteresis": hysteresis, "watershed": watershed, "bilateral": bilateral}


def default_options(spec: StructureSpec, method: str | None = None) -> dict[str, Any]:
    """The options ``method`` (default: the spec's) runs with: its own defaults, then the spec's
    ``threshold``/``min_size`` and ``postprocessing_options`` where the method takes them."""
    method = method or spec.postprocessing
    if method not in METHODS:
        raise ValueError(f"unknown post-processing '{method}'; one of: {', '.join(METHODS)}")
    parameters = inspect.signature(METHODS[method]).parameters
    options = {name: p.default for name, p in parameters.items() if name != "probabilities"}
    from_spec = {"threshold": spec.threshold, "min_size": spec.min_size, **spec.postprocessing_options}
    options.update({k: v for k, v in from_spec.items() if k in options})
    return options


def resolve(spec: StructureSpec, method: str | None = None, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """The method (default: the spec's) and the complete options it runs with, ``overrides`` applied.

    Raises ValueError naming the valid methods or options, and for option values of the wrong type.
    """
    method = method or spec.postprocessing
    options = default_options(spec, method)
    unknown = set(overrides) - set(options)
    if unknown:
        raise ValueError(f"'{method}' post-processing takes {', '.join(sorted(options))}, not {', '.join(unknown)}")
    for name, value in overrides.items():
        kind = type(options[name])
        try:
            options[name] = _as(kind, value)
        except (TypeError, ValueError) as e:
            expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise ValueError(f"{name} must be {expected} for '{method}' post-processing, not {value!r}") from e
    return method, options


def postprocess(
    probabilities: np.ndarray, spec: StructureSpec, method: str | None = None, **overrides: Any
) -> np.ndarray:
    """Label from probabilities with the spec's method (or ``method``); ``overrides`` as in :func:`resolve`."""
    method, options = resolve(spec, method, **overrides)
    return METHODS[method](probabilities, **options)


def _as(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return bool(value)
    return kind(value)
