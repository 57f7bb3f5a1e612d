"""What a file says about its voxels' physical size: length units, and the voxel size conventions in use.

Voxel sizes are (z, y, x) micrometres; ``None`` where the file does not say, or says something that is damage
rather than microscopy (outside :data:`_VOXEL_SIZE_RANGE`).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from typing import Any

# Length unit name (lower case) → micrometres.
UNIT_TO_UM: dict[str, float] = {
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nanometers": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,  # ImageJ escapes the micro sign in TIFF descriptions
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micrometers": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
    "angstrom": 1e-4,
    "å": 1e-4,
}


def unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit``; None for a missing or unknown unit (``pixel``, ``none``, ...)."""
    if not isinstance(unit, str):
        return None
    return UNIT_TO_UM.get(unit.strip().lower())


def to_um(value: float, unit: str | None) -> float:
    """``value`` in ``unit`` as micrometres; a missing or unknown unit leaves the value as it is."""
    factor = unit_factor(unit) if unit else None
    return float(value) * factor if factor else float(value)


# Voxel sizes (µm) outside this range are damage, not microscopy (and ITK squares them: 1e-200 becomes 0).
_VOXEL_SIZE_RANGE = (1e-6, 1e9)


def valid_size(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    """A (z, y, x) voxel size if all three are within :data:`_VOXEL_SIZE_RANGE` (so finite and positive)."""
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    low, high = _VOXEL_SIZE_RANGE
    if len(out) != 3 or not all(low <= v <= high for v in out):
        return None
    return out


def _pick_axes(values: Sequence[Any], keep: tuple[int, int, int], ndim: int) -> list[Any] | None:
    """Per-axis attribute values for the kept axes: one value per native axis, or exactly three."""
    values = list(values)
    if len(values) == ndim:
        return [values[i] for i in keep]
    if len(values) == 3:
        return values
    return None


def spacing_from_attrs(
    attrs: dict, keep: tuple[int, int, int], ndim: int, xyz: bool = False
) -> tuple[float, float, float] | None:
    """Voxel size from the attribute conventions in use (CREMI, ilastik, our data, N5 viewers); None if absent."""
    try:
        value = attrs.get("voxel_size_zyx_nm")
        if isinstance(value, bytes):
            value = value.decode()
        value = json.loads(value) if isinstance(value, str) else value
        if value is not None:  # our shared data; "null" where the source never said
            picked = _pick_axes(value, keep, ndim)
            return valid_size([float(v) * 1e-3 for v in picked]) if picked else None
        if attrs.get("element_size_um") is not None:
            picked = _pick_axes(attrs["element_size_um"], keep, ndim)
            return valid_size(picked)
        if isinstance(attrs.get("pixelResolution"), dict):  # n5-viewer / BigDataViewer: x, y, z
            res = attrs["pixelResolution"]
            factor = unit_factor(res.get("unit")) if res.get("unit") else 1.0
            if factor is None or "dimensions" not in res:
                return None
            picked = _pick_axes(list(res["dimensions"])[::-1], keep, ndim)
            return valid_size([float(v) * factor for v in picked]) if picked else None
        if attrs.get("resolution") is not None:  # CREMI convention: nm; N5 stores it x first
            values = [float(v) * 1e-3 for v in attrs["resolution"]]
            picked = _pick_axes(values[::-1] if xyz else values, keep, ndim)
            return valid_size(picked)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None  # a malformed attribute says nothing usable about the voxel size
    return None


def ngff_spacing(attrs: dict, dataset: str, keep: tuple[int, int, int], ndim: int) -> tuple[float, float, float] | None:
    """OME-NGFF multiscales: the scale transform of the chosen dataset."""
    try:
        for multiscale in attrs.get("multiscales", []):
            axes = [ax if isinstance(ax, dict) else {} for ax in multiscale.get("axes", [])]
            for ds in multiscale.get("datasets", []):
                if ds.get("path") != dataset:
                    continue
                for transform in ds.get("coordinateTransformations", []):
                    if transform.get("type") != "scale":
                        continue
                    scale = _pick_axes(transform["scale"], keep, ndim)
                    units = _pick_axes([ax.get("unit") for ax in axes], keep, ndim) if axes else None
                    if scale is None:
                        return None
                    factors = [unit_factor(u) if u else 1.0 for u in (units or [None] * 3)]
                    known = [f for f in factors if f is not None]
                    if len(known) != len(factors):
                        return None
                    return valid_size([float(s) * f for s, f in zip(scale, known)])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return None


# --- TIFF tags and OME-XML ---------------------------------------------------------------------

_DEFAULT_DPI = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)  # screen/print settings, not a pixel size


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes: dict[str, float | None] = {}
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        factor = unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        try:
            sizes[ax] = float(value) * factor if value is not None and factor is not None else None
        except ValueError:
            sizes[ax] = None
    x = sizes["X"] or sizes["Y"]
    y = sizes["Y"] or sizes["X"]
    if x is None or y is None:
        return None
    return valid_size((sizes["Z"] or x, y, x))


def _tiff_pixel_size(page, tag: str) -> float | None:
    """Units per pixel from an X/YResolution tag (pixels per unit); None when absent or zero."""
    res = page.tags.get(tag)
    if res is None:
        return None
    try:
        num, den = res.value
        return float(den) / float(num) if num and den else None
    except (TypeError, ValueError):
        return None


def tiff_voxel_size(tif, page) -> tuple[float, float, float] | None:
    """See :class:`TiffSource` for the rules."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_voxel_size(tif.ome_metadata)
        if size is not None:
            return size
    x_res, y_res = _tiff_pixel_size(page, "XResolution"), _tiff_pixel_size(page, "YResolution")
    x, y = x_res or y_res, y_res or x_res  # one resolution tag stands for both
    if x is None or y is None:
        return None
    ij = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    factor = unit_factor(ij.get("unit"))
    if factor is not None:  # ImageJ calibration in a length unit
        if factor == UNIT_TO_UM["inch"] and _default_dpi(x, y):
            return None
        try:
            z = float(ij.get("spacing", 1.0))
        except (TypeError, ValueError):
            return None
        return valid_size((z * factor, y * factor, x * factor))
    tag = page.tags.get("ResolutionUnit")
    try:
        unit = int(tag.value) if tag is not None else 2  # the TIFF default is inch
    except (TypeError, ValueError):
        return None
    factor = {2: UNIT_TO_UM["inch"], 3: UNIT_TO_UM["cm"]}.get(unit)
    if factor is None or (x == 1.0 and y == 1.0) or (unit == 2 and _default_dpi(x, y)):
        return None
    return valid_size((x * factor, y * factor, x * factor))


def _default_dpi(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-6) and any(math.isclose(1.0 / x, d, rel_tol=1e-6) for d in _DEFAULT_DPI)
