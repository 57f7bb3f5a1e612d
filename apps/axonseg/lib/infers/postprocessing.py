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

Bounds (:data:`OPTION_RANGES`; a request outside them gets a 400 before anything is queued or read):

- ``threshold``, ``high``, ``low``: probabilities, in [0, 1]; hysteresis also needs ``low < high``.
- ``min_size``: voxels, in [0, 10,000,000]. An interactive region is 4.2 Mvox by default, so a larger
  ``min_size`` empties it; whole-volume objects are counted across blocks and may be larger, up to the cap.
- ``min_distance``: voxels between watershed seeds, in [1, 32] (skimage needs 1; a 200 nm mitochondrion
  is 40 voxels across at 5 nm, and whole-volume blocks read ``3 x min_distance + 8`` voxels around).
- ``radius``: in-plane opening radius in pixels, in [0, 16]. The opening erases anything narrower than
  ``2 x radius + 1`` (membranes are a few pixels wide); its cost grows as ``radius²`` (16: ~1 s/Mvox, 30: ~7).
- ``sigma_color``: in (0, 1], the range of a probability; ``sigma_spatial``: pixels, in (0, 4] (the
  filter's window is ``6 x sigma_spatial + 1`` pixels wide; 4 is ~3 s/Mvox on a CPU core, 1 is 0.3).
- ``skeleton``, ``instances``: true or false.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from scipy import ndimage

from ..configs.spec import StructureSpec
from ..errors import InvalidRequest
from ..params import Range, boolean, shown

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

MAX_MIN_SIZE = 10_000_000
# The numeric options' bounds (why: the module docstring); the rest (skeleton, instances) are flags.
OPTION_RANGES: dict[str, Range] = {
    "threshold": Range(0.0, 1.0),
    "high": Range(0.0, 1.0),
    "low": Range(0.0, 1.0),
    "min_size": Range(0, MAX_MIN_SIZE, integer=True),
    "min_distance": Range(1, 32, integer=True),
    "radius": Range(0, 16, integer=True),
    "sigma_color": Range(0.0, 1.0, low_open=True),
    "sigma_spatial": Range(0.0, 4.0, low_open=True),
}


def default_options(spec: StructureSpec, method: str | None = None) -> dict[str, Any]:
    """The options ``method`` (default: the spec's) runs with: its own defaults, then the spec's
    ``threshold``/``min_size`` and ``postprocessing_options`` where the method takes them."""
    method = method or spec.postprocessing
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidRequest(f"unknown post-processing {shown(method)}; one of: {', '.join(METHODS)}")
    parameters = inspect.signature(METHODS[method]).parameters
    options = {name: p.default for name, p in parameters.items() if name != "probabilities"}
    from_spec = {"threshold": spec.threshold, "min_size": spec.min_size, **spec.postprocessing_options}
    options.update({k: v for k, v in from_spec.items() if k in options})
    return options


def resolve(spec: StructureSpec, method: str | None = None, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """The method (default: the spec's) and the complete options it runs with, ``overrides`` applied.

    The one parser of post-processing options (infer, batch infer and whole-volume requests, on the API
    and in the worker): raises InvalidRequest naming the valid methods or options, and for a value out of
    its :data:`OPTION_RANGES` or of the wrong type.
    """
    method = method or spec.postprocessing
    options = default_options(spec, method)
    unknown = set(overrides) - set(options)
    if unknown:
        raise InvalidRequest(
            f"'{method}' post-processing takes {', '.join(sorted(options))}, not {', '.join(sorted(unknown))}"
        )
    where = f" for '{method}' post-processing"
    for name, value in overrides.items():
        if name in OPTION_RANGES:
            options[name] = OPTION_RANGES[name].check(name, value, where)
        elif isinstance(options[name], bool):
            options[name] = boolean(name, value, where)
        else:  # an option added without bounds: the code's mistake, not the client's
            raise KeyError(f"post-processing option '{name}' has no bounds in OPTION_RANGES")
    if method == "hysteresis" and not options["low"] < options["high"]:
        raise InvalidRequest(f"hysteresis needs low < high, got low {options['low']}, high {options['high']}")
    return method, options


def postprocess(
    probabilities: np.ndarray, spec: StructureSpec, method: str | None = None, **overrides: Any
) -> np.ndarray:
    """Label from probabilities with the spec's method (or ``method``); ``overrides`` as in :func:`resolve`."""
    method, options = resolve(spec, method, **overrides)
    return METHODS[method](probabilities, **options)
