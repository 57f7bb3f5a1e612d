"""From foreground probabilities to a label, per structure. Each method is a plain function of
``(probabilities, **options)``; a structure's spec names its default method and options, and an infer
request may override both (they are listed in the model's infer config).

- ``threshold``: threshold, drop connected components under ``min_size`` voxels (synapses: a size filter).
- ``objects``: threshold, then CREMI-style object rules: size, peak probability and the number of sections an
  object spans (synapses).
- ``hysteresis``: components above ``low`` that contain a voxel above ``high``, then a size filter
  (axons; ExLLSM's defaults are high 0.98, low 0.2, 1000 voxels).
  Both take ``skeleton=True`` to return the 3D skeleton (centre lines of axons, for tracing and
  counting) instead of the mask.
- ``watershed``: instances split by a watershed on the distance transform from its maxima
  (``min_distance`` apart), small instances removed (mitochondria); ``instances=True`` returns ids.
- ``bilateral``: an in-plane bilateral filter of the probabilities, threshold, then erosion and dilation
  by ``radius`` in-plane (membranes, as in seed 003).
- ``trace``: neurite ids through the stack from membrane probabilities (:mod:`.tracing`: distance-transform
  seeds, per-section seeded watershed, Hungarian linking across sections, optional ``anchors``). Its label
  is 0 on membrane and a neurite id elsewhere, the reverse of the others' (:func:`structure_mask`), and it
  runs on the image's own grid (:data:`ON_IMAGE_GRID`): its anchors and sections are the image's, and it
  measures in nm.

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
- ``sigma``: pixels of Gaussian smoothing of the distance transform, in [0, 8]; ``min_area``: pixels, in
  [0, 100,000]; ``max_cost``: in [0, 1] (a link's cost is in [0, 1]); ``max_slope``: in-plane nm per nm of z,
  in (0, 20]; ``join_cover``: a share of a fragment's area, in (0.5, 1] (over half: one partner at most);
  ``h``: pixels of distance, in (0, 16] (a 3D seed's rise above its saddle); ``mode``: ``sections`` or ``3d``.
- ``min_peak``: a probability, in [0, 1]; ``min_sections``: sections, in [1, 10,000].
- ``skeleton``, ``instances``: true or false.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from ..configs.spec import StructureSpec
from ..errors import InvalidRequest
from ..params import Range, boolean, choice, shown
from .tracing import MODES, trace

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


def objects(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 0,
    min_peak: float = 0.5,
    min_sections: int = 1,
) -> np.ndarray:
    """CREMI-style object rules for small sparse structures: 6-connected components of ``probabilities >
    threshold`` holding a voxel of probability ``min_peak`` or more (evidence: a faint blob is rarely a
    synapse), then 26-connected objects of ``min_size`` voxels (size) that span ``min_sections`` sections
    (shape: a cleft crosses several 50 nm sections, a stain speck one). Whole-volume blocks count the same."""
    components, count = ndimage.label(probabilities > threshold)
    if count == 0:
        return np.zeros(probabilities.shape, np.uint8)
    peaks = np.asarray(ndimage.maximum(probabilities, components, np.arange(1, count + 1)))
    seeded = np.concatenate([[False], peaks >= min_peak])[components]
    labels, count = ndimage.label(seeded, structure=_FULL)
    if count == 0:
        return np.zeros(probabilities.shape, np.uint8)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    sections = np.array([box[0].stop - box[0].start for box in ndimage.find_objects(labels)])
    keep = np.concatenate([[False], (sizes >= min_size) & (sections >= min_sections)])
    return keep[labels].astype(np.uint8)


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "threshold": threshold,
    "hysteresis": hysteresis,
    "watershed": watershed,
    "bilateral": bilateral,
    "objects": objects,
    "trace": trace,
}
# Methods that run on the image's grid, not the model's (``lib.infers.predict``), and are given the
# grid's ``voxel_size_nm`` and the request's ``anchors``: the arguments no request option sets.
ON_IMAGE_GRID = frozenset({"trace"})
CONTEXT_ARGUMENTS = ("voxel_size_nm", "anchors")
# Methods whose label marks the regions the structure separates (0 on the structure), not the structure.
SEPARATED_BY_STRUCTURE = frozenset({"trace"})

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
    "sigma": Range(0.0, 8.0),
    "min_area": Range(0, 100_000, integer=True),
    "max_cost": Range(0.0, 1.0),
    "max_slope": Range(0.0, 20.0, low_open=True),
    "join_cover": Range(0.5, 1.0, low_open=True),
    "h": Range(0.0, 16.0, low_open=True),
    "min_peak": Range(0.0, 1.0),
    "min_sections": Range(1, 10_000, integer=True),
}
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"mode": MODES}


def structure_mask(label: np.ndarray, method: str) -> np.ndarray:
    """Where a method's label marks the structure: ``label > 0``, or ``label == 0`` for ``trace``."""
    return label == 0 if method in SEPARATED_BY_STRUCTURE else label > 0


def structure_label(label: np.ndarray, method: str) -> np.ndarray:
    """A method's label as a label of the structure (what is kept as a region's ``original``): itself, or
    for ``trace`` the membrane between the neurites as 1."""
    return structure_mask(label, method).astype(np.uint8) if method in SEPARATED_BY_STRUCTURE else label


def default_options(spec: StructureSpec, method: str | None = None) -> dict[str, Any]:
    """The options ``method`` (default: the spec's) runs with: its own defaults, then the spec's
    ``threshold``/``min_size`` and ``postprocessing_options`` where the method takes them."""
    method = method or spec.postprocessing
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidRequest(f"unknown post-processing {shown(method)}; one of: {', '.join(METHODS)}")
    parameters = inspect.signature(METHODS[method]).parameters
    options = {name: p.default for name, p in parameters.items() if name not in ("probabilities", *CONTEXT_ARGUMENTS)}
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
        elif name in OPTION_CHOICES:
            options[name] = choice(name, value, OPTION_CHOICES[name])
        elif isinstance(options[name], bool):
            options[name] = boolean(name, value, where)
        else:  # an option added without bounds: the code's mistake, not the client's
            raise KeyError(f"post-processing option '{name}' has no bounds in OPTION_RANGES")
    if method == "hysteresis" and not options["low"] < options["high"]:
        raise InvalidRequest(f"hysteresis needs low < high, got low {options['low']}, high {options['high']}")
    return method, options


def postprocess(
    probabilities: np.ndarray,
    spec: StructureSpec,
    method: str | None = None,
    *,
    voxel_size_nm: tuple[float, ...] | None = None,
    anchors: np.ndarray | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Label from probabilities with the spec's method (or ``method``); ``overrides`` as in :func:`resolve`.

    ``voxel_size_nm`` (of the grid ``probabilities`` are on; the spec's when None) and ``anchors`` reach
    the methods of :data:`ON_IMAGE_GRID`; anchors for any other method are refused.
    """
    method, options = resolve(spec, method, **overrides)
    if method in ON_IMAGE_GRID:
        options["voxel_size_nm"] = voxel_size_nm or spec.voxel_size_nm
        options["anchors"] = anchors
    elif anchors is not None:
        raise InvalidRequest(f"anchors (a label sent with the request) are read only by trace, not by '{method}'")
    return METHODS[method](probabilities, **options)
