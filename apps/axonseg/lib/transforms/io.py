"""Microscopy volume IO: one reader and one writer for every format axonseg accepts.

Arrays are always (z, y, x), spacing and origin are (z, y, x) in micrometres. Formats that
store x first (ITK, N5) are converted at this boundary and nowhere else.

Readers raise :class:`VolumeError` with a message meant for a person; the server turns it into
a 4xx reply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import VolumeError

# Extension → format name. Order matters: ".nii.gz" must match before ".gz" style suffixes.
FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".tiff": "tiff",
    ".tif": "tiff",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".zarr": "zarr",
    ".n5": "n5",
}

# Dataset names tried, in order, when an HDF5/Zarr/N5 container is given without a dataset path.
DEFAULT_DATASETS = ("raw", "volumes/raw", "data", "image", "volume", "s0", "0")

_UNIT_TO_UM = {
    "nm": 1e-3,
    "nanometer": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
}


@dataclass
class Volume:
    """A 3D image with its physical geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # ITK direction cosines (x, y, z order, as NRRD/NIfTI store them); None means identity.
    direction: np.ndarray | None = None
    source_format: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


def volume_format(path: str | os.PathLike) -> str:
    """Format name for a path, from its extension (a folder of PNGs is ``png_stack``)."""
    ext = volume_extension(path)
    if ext:
        return FORMATS[ext]
    if os.path.isdir(path) and any(p.lower().endswith(".png") for p in os.listdir(path)):
        return "png_stack"
    raise VolumeError(
        f"unsupported file type '{os.path.basename(str(path).rstrip('/'))}'; expected one of: "
        + ", ".join(FORMATS)
        + " or a folder of PNG slices"
    )


def volume_extension(path: str | os.PathLike) -> str:
    """The recognised extension of ``path`` (``.nii.gz`` counts as one)."""
    name = str(path).lower().rstrip("/")
    for ext in FORMATS:
        if name.endswith(ext):
            return ext
    return ""


def _to_um(value: float, unit: str | None) -> float:
    if not unit:
        return float(value)
    factor = _UNIT_TO_UM.get(unit.strip().lower())
    return float(value) * factor if factor else float(value)


def validate(array: np.ndarray, name: str = "volume") -> np.ndarray:
    """Check that ``array`` is a usable 3D intensity volume and return it squeezed to 3D."""
    if array.size == 0:
        raise VolumeError(f"{name} is empty (shape {tuple(array.shape)})")
    squeezed = array
    while squeezed.ndim > 3 and squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    if squeezed.ndim != 3:
        raise VolumeError(
            f"{name} has {array.ndim} dimensions (shape {tuple(array.shape)}); "
            "axonseg needs a single-channel 3D volume (z, y, x)"
        )
    if squeezed.dtype == bool:
        squeezed = squeezed.astype(np.uint8)
    if not (np.issubdtype(squeezed.dtype, np.integer) or np.issubdtype(squeezed.dtype, np.floating)):
        raise VolumeError(f"{name} has data type {squeezed.dtype}; expected integer or float intensities")
    if np.issubdtype(squeezed.dtype, np.floating) and not np.isfinite(squeezed).any():
        raise VolumeError(f"{name} contains no finite values (all NaN or infinite)")
    return squeezed


def read_volume(path: str | os.PathLike, dataset: str | None = None) -> Volume:
    """Read any supported format into a :class:`Volume`.

    Args:
        path: file or folder (Zarr, N5, PNG stack).
        dataset: dataset inside an HDF5/Zarr/N5 container; found automatically when omitted.
    """
    path = str(path)
    if not os.path.exists(path):
        raise VolumeError(f"file not found: {os.path.basename(path)}")
    fmt = volume_format(path)
    reader = _READERS[fmt]
    try:
        volume = reader(path, dataset)
    except VolumeError:
        raise
    except Exception as e:  # every library raises its own types for a damaged file
        raise VolumeError(f"cannot read {fmt} file '{os.path.basename(path)}': {e}") from e
    volume.array = validate(volume.array, os.path.basename(path))
    volume.source_format = fmt
    return volume


# --- TIFF -------------------------------------------------------------------------------------


def _read_tiff(path: str, dataset: str | None) -> Volume:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise VolumeError(f"TIFF file '{os.path.basename(path)}' has no images")
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
        spacing = [1.0, 1.0, 1.0]
        if tif.is_ome and tif.ome_metadata:
            spacing = _ome_spacing(tif.ome_metadata) or spacing
        else:
            page = tif.pages[0]
            unit = None
            if tif.is_imagej and tif.imagej_metadata:
                unit = tif.imagej_metadata.get("unit")
                if "spacing" in tif.imagej_metadata:
                    spacing[0] = _to_um(tif.imagej_metadata["spacing"], unit)
            for index, tag in ((1, "YResolution"), (2, "XResolution")):
                res = page.tags.get(tag)
                if res is not None:
                    num, den = res.value
                    if num:
                        spacing[index] = _to_um(den / num, unit)
    # Drop singleton non-spatial axes (channel, time, sample), keep z/y/x in order.
    for ax in "CTSEQI":
        while ax in axes and array.shape[axes.index(ax)] == 1 and array.ndim > 3:
            i = axes.index(ax)
            array = np.take(array, 0, axis=i)
            axes = axes[:i] + axes[i + 1 :]
    if array.ndim == 3 and axes[-2:] != "YX":
        raise VolumeError(f"TIFF axes '{axes}' are not (z, y, x)")
    return Volume(array, tuple(spacing))  # type: ignore[arg-type]


def _ome_spacing(xml: str) -> list[float] | None:
    root = ElementTree.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    out = []
    for ax in "ZYX":
        value = pixels.get(f"PhysicalSize{ax}")
        out.append(_to_um(float(value), pixels.get(f"PhysicalSize{ax}Unit", "µm")) if value else 1.0)
    return out


# --- HDF5 / Zarr / N5 ---------------------------------------------------------------------------


def _pick_dataset(names: Sequence[str], dataset: str | None, path: str) -> str:
    if dataset:
        if dataset not in names:
            raise VolumeError(f"dataset '{dataset}' not found in '{os.path.basename(path)}'; it has: {list(names)}")
        return dataset
    for candidate in DEFAULT_DATASETS:
        if candidate in names:
            return candidate
    if len(names) == 1:
        return names[0]
    raise VolumeError(f"'{os.path.basename(path)}' holds several datasets {list(names)}; say which one to read")


def _spacing_from_attrs(attrs: dict, xyz: bool = False) -> tuple[float, float, float]:
    """Voxel size from the attribute conventions in use (CREMI, ilastik, our data, N5 viewers)."""
    value = attrs.get("voxel_size_zyx_nm")
    value = json.loads(value) if isinstance(value, str) else value
    if value is not None:  # our shared data; "null" where the source never said
        return tuple(float(v) * 1e-3 for v in value)  # type: ignore[return-value]
    if "element_size_um" in attrs:
        return tuple(float(v) for v in attrs["element_size_um"])  # type: ignore[return-value]
    if "pixelResolution" in attrs:  # n5-viewer / BigDataViewer: x, y, z
        res = attrs["pixelResolution"]
        dims = res.get("dimensions", [1, 1, 1])
        return tuple(_to_um(v, res.get("unit")) for v in dims[::-1])  # type: ignore[return-value]
    if "resolution" in attrs:  # CREMI convention: nm; N5 stores it x first
        value = [float(v) * 1e-3 for v in attrs["resolution"]]
        return tuple(value[::-1] if xyz else value)  # type: ignore[return-value]
    return (1.0, 1.0, 1.0)


def _hdf5_datasets(handle) -> list[str]:
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
    return names


def _read_hdf5(path: str, dataset: str | None) -> Volume:
    import h5py

    with h5py.File(path, "r") as f:
        name = _pick_dataset(_hdf5_datasets(f), dataset, path)
        ds = f[name]
        attrs = {**dict(f.attrs), **dict(ds.attrs)}
        return Volume(ds[()], _spacing_from_attrs(attrs), meta={"dataset": name})


def _zarr_datasets(group, prefix: str = "") -> list[str]:
    import zarr

    if isinstance(group, zarr.Array):
        return [""]
    names = []
    for key, item in group.items():
        full = f"{prefix}{key}"
        if isinstance(item, zarr.Array):
            names.append(full)
        else:
            names.extend(_zarr_datasets(item, full + "/"))
    return names


def _ngff_spacing(attrs: dict, dataset: str) -> tuple[float, float, float] | None:
    """OME-NGFF multiscales: the scale transform of the chosen dataset, last three axes."""
    for multiscale in attrs.get("multiscales", []):
        units = [ax.get("unit") for ax in multiscale.get("axes", []) if isinstance(ax, dict)]
        for ds in multiscale.get("datasets", []):
            if ds.get("path") == dataset:
                for transform in ds.get("coordinateTransformations", []):
                    if transform.get("type") == "scale":
                        scale = transform["scale"][-3:]
                        unit_list = units[-3:] if len(units) >= 3 else [None] * 3
                        return tuple(_to_um(s, u) for s, u in zip(scale, unit_list))  # type: ignore[return-value]
    return None


def _read_zarr(path: str, dataset: str | None, n5: bool = False) -> Volume:
    import zarr

    store = zarr.N5Store(path) if n5 else zarr.DirectoryStore(path)
    root = zarr.open(store, mode="r")
    name = _pick_dataset(_zarr_datasets(root), dataset, path)
    array = root if name == "" else root[name]
    attrs = {**dict(root.attrs), **dict(array.attrs)} if name else dict(array.attrs)
    spacing = _ngff_spacing(dict(root.attrs), name) or _spacing_from_attrs(attrs, xyz=n5)
    return Volume(array[...], spacing, meta={"dataset": name})


def _read_n5(path: str, dataset: str | None) -> Volume:
    return _read_zarr(path, dataset, n5=True)


# --- ITK formats and PNG stacks -----------------------------------------------------------------


def _read_itk(path: str, dataset: str | None) -> Volume:
    import itk

    image = itk.imread(path)
    array = np.asarray(itk.array_from_image(image))
    spacing = tuple(float(s) for s in reversed(list(image.GetSpacing())))
    origin = tuple(float(o) for o in reversed(list(image.GetOrigin())))
    direction = np.array(itk.array_from_matrix(image.GetDirection()), dtype=float)
    return Volume(array, spacing, origin, None if np.allclose(direction, np.eye(3)) else direction)  # type: ignore[arg-type]


def _read_png_stack(path: str, dataset: str | None) -> Volume:
    from PIL import Image

    files = sorted(p for p in os.listdir(path) if p.lower().endswith(".png"))
    slices = [np.asarray(Image.open(os.path.join(path, f))) for f in files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise VolumeError(f"PNG slices in '{os.path.basename(path)}' differ in shape: {sorted(shapes)}")
    if slices[0].ndim == 3:  # RGB(A) slices of a grey image: keep one channel
        slices = [s[..., 0] for s in slices]
    return Volume(np.stack(slices))


_READERS = {
    "tiff": _read_tiff,
    "hdf5": _read_hdf5,
    "zarr": _read_zarr,
    "n5": _read_n5,
    "nrrd": _read_itk,
    "nifti": _read_itk,
    "png_stack": _read_png_stack,
}


# --- writing ------------------------------------------------------------------------------------


def write_volume(path: str | os.PathLike, volume: Volume, dataset: str = "raw") -> str:
    """Write ``volume`` in the format given by the extension of ``path``; returns ``path``.

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    path = str(path)
    fmt = volume_format(path)
    ext = volume_extension(path)
    tmp = re.sub(re.escape(ext) + "$", f".part{_writer_tag()}{ext}", path, flags=re.IGNORECASE)
    try:
        _WRITERS[fmt](tmp, volume, dataset)
        if os.path.isdir(path):  # Zarr/N5 are folders: os.replace cannot overwrite a non-empty one
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)
    return path


def _writer_tag() -> str:
    """Unique per process and thread: concurrent writers of one file each use their own temporary."""
    return f"{os.getpid()}-{threading.get_ident()}"


def remove_path(path: str) -> None:
    """Remove a file or a folder (Zarr/N5) if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def copy_atomic(source: str, dest: str) -> None:
    """Copy a file or folder so that ``dest`` appears complete or not at all."""
    tmp = f"{dest}.part{_writer_tag()}"
    remove_path(tmp)
    try:
        if os.path.isdir(source):
            shutil.copytree(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        if os.path.isdir(dest):  # os.replace overwrites files atomically, but not folders
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        remove_path(tmp)


def _write_itk(path: str, volume: Volume, dataset: str) -> None:
    import itk

    image = itk.image_from_array(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(s) for s in reversed(volume.spacing)])
    image.SetOrigin([float(o) for o in reversed(volume.origin)])
    if volume.direction is not None:
        image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.direction, dtype=float)))
    itk.imwrite(image, path, compression=True)


def _write_tiff(path: str, volume: Volume, dataset: str) -> None:
    import tifffile

    z, y, x = volume.spacing
    tifffile.imwrite(
        path,
        volume.array,
        imagej=True,
        resolution=(1.0 / x, 1.0 / y),
        metadata={"spacing": z, "unit": "um", "axes": "ZYX"},
    )


def _write_hdf5(path: str, volume: Volume, dataset: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        ds = f.create_dataset(dataset, data=volume.array, compression="gzip")
        ds.attrs["element_size_um"] = list(volume.spacing)


def _write_zarr(path: str, volume: Volume, dataset: str, n5: bool = False) -> None:
    import zarr

    store = zarr.N5Store(path) if n5 else zarr.DirectoryStore(path)
    root = zarr.group(store=store, overwrite=True)
    array = root.create_dataset(dataset, data=volume.array, chunks=True)
    if n5:
        array.attrs["pixelResolution"] = {
            "dimensions": list(volume.spacing[::-1]),
            "unit": "um",
        }
    else:
        array.attrs["element_size_um"] = list(volume.spacing)


def _write_n5(path: str, volume: Volume, dataset: str) -> None:
    _write_zarr(path, volume, dataset, n5=True)


_WRITERS = {
    "tiff": _write_tiff,
    "hdf5": _write_hdf5,
    "zarr": _write_zarr,
    "n5": _write_n5,
    "nrrd": _write_itk,
    "nifti": _write_itk,
}


def same_geometry(a: Volume, b: Volume, rtol: float = 1e-5) -> bool:
    """True when two volumes share shape, spacing, origin and direction."""
    identity = np.eye(3)
    return (
        a.shape == b.shape
        and np.allclose(a.spacing, b.spacing, rtol=rtol)
        and np.allclose(a.origin, b.origin, rtol=rtol, atol=1e-6)
        and np.allclose(
            identity if a.direction is None else a.direction,
            identity if b.direction is None else b.direction,
        )
    )
