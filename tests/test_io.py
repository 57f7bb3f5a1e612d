"""Microscopy readers and writers: every format round-trips array, dtype and voxel size."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from conftest import SAMPLE_DATA, shared_file

from lib.errors import VolumeError
from lib.transforms.io import Volume, read_volume, same_geometry, write_volume

SPACING = (0.05, 0.004, 0.004)  # ssTEM-like: 50 nm z, 4 nm xy, in µm


@pytest.fixture(scope="module")
def em_volume() -> Volume:
    """A real ssTEM crop (ISBI 2012) with its voxel size, to write in every format."""
    with h5py.File(shared_file("isbi2012_sstem.h5")) as f:
        return Volume(f["raw"][:6, :40, :48], SPACING, origin=(1.0, 2.0, 3.0))


@pytest.mark.parametrize("name", ["v.tif", "v.tiff", "v.h5", "v.hdf5", "v.zarr", "v.n5", "v.nrrd", "v.nii.gz", "v.nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_round_trip(tmp_path, em_volume, name, dtype):
    volume = Volume(em_volume.array.astype(dtype), em_volume.spacing, em_volume.origin)
    path = write_volume(tmp_path / name, volume)
    back = read_volume(path)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, SPACING, rtol=1e-5)
    if name.endswith((".nrrd", ".nii", ".nii.gz")):  # only ITK formats carry an origin
        assert same_geometry(back, volume)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, em_volume):
    write_volume(tmp_path / "a.nrrd", em_volume)
    write_volume(tmp_path / "a.nrrd", em_volume)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nrrd"]


def test_imagej_tiff_voxel_size_from_metadata(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, array, imagej=True, resolution=(1 / 0.2, 1 / 0.3), metadata={"spacing": 2.5, "unit": "um"})
    volume = read_volume(path)
    assert volume.spacing == pytest.approx((2.5, 0.3, 0.2))


def test_imagej_tiff_in_nanometres(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(1 / 4, 1 / 4),
                     metadata={"spacing": 50, "unit": "nm"})  # fmt: skip
    assert read_volume(path).spacing == pytest.approx((0.05, 0.004, 0.004))


def test_ome_tiff_voxel_size(tmp_path):
    path = tmp_path / "v.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.5}
    tifffile.imwrite(path, np.ones((3, 8, 9), np.uint16), ome=True, metadata=metadata)
    volume = read_volume(path)
    assert volume.shape == (3, 8, 9)
    assert volume.spacing == pytest.approx((1.5, 0.2, 0.1))


def test_plain_multipage_tiff(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for z in range(5):
            tif.write(np.full((7, 8), z, np.uint8), contiguous=True)
    volume = read_volume(path)
    assert volume.shape == (5, 7, 8)
    assert volume.array[3].max() == 3


def test_hdf5_dataset_path_is_configurable(tmp_path):
    path = tmp_path / "multi.h5"
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = np.ones((2, 3, 4), np.uint8)
        f["volumes/other"] = np.zeros((2, 3, 4), np.uint8)
    assert read_volume(path).array.max() == 1  # volumes/raw is a default name
    assert read_volume(path, "volumes/other").array.max() == 0
    with pytest.raises(VolumeError, match="not found"):
        read_volume(path, "missing")


def test_real_shared_hdf5_voxel_size():
    volume = read_volume(shared_file("drosophila_vnc_stack1_xlt512.h5"), "raw")
    assert volume.shape == (20, 1024, 512)
    assert volume.spacing == pytest.approx((0.05, 0.0046, 0.0046))
    labels = read_volume(shared_file("drosophila_vnc_stack1_xlt512.h5"), "labels/synapse")
    assert set(np.unique(labels.array)) == {0, 1}


def test_n5_voxel_size_follows_x_first_convention(tmp_path):
    import zarr

    store = zarr.N5Store(str(tmp_path / "v.n5"))
    root = zarr.group(store=store)
    root.create_dataset("raw", data=np.zeros((4, 5, 6), np.uint8))
    root["raw"].attrs["resolution"] = [4.0, 4.0, 40.0]  # N5/CREMI: x, y, z in nm
    volume = read_volume(tmp_path / "v.n5")
    assert volume.shape == (4, 5, 6)
    assert volume.spacing == pytest.approx((0.04, 0.004, 0.004))


def test_ngff_zarr_scale(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    root.create_dataset("0", data=np.zeros((4, 5, 6), np.uint16))
    root.attrs["multiscales"] = [
        {
            "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        }
    ]
    assert read_volume(tmp_path / "v.zarr").spacing == pytest.approx((2.0, 0.5, 0.5))


def test_png_stack(tmp_path):
    from PIL import Image

    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(4):
        Image.fromarray(np.full((6, 7), z * 10, np.uint8)).save(folder / f"s{z:03d}.png")
    volume = read_volume(folder)
    assert volume.shape == (4, 6, 7)
    assert volume.array[2, 0, 0] == 20


def test_sample_data_are_readable_with_voxel_size():
    shapes = {p.name: read_volume(p).shape for p in SAMPLE_DATA.iterdir() if p.suffix in (".tif", ".h5", ".nrrd")}
    assert shapes == {
        "trailmap_original.tif": (101, 120, 120),
        "gala_fibsem.h5": (50, 100, 200),
        "trailmap_chunk.nrrd": (64, 128, 128),
    }
    assert read_volume(SAMPLE_DATA / "gala_fibsem.h5").spacing == pytest.approx((0.01, 0.01, 0.01))


# --- bad input ------------------------------------------------------------------------------------


def test_corrupt_tiff(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(VolumeError, match="(?i)tiff"):
        read_volume(path)


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VolumeError):
        read_volume(path)


@pytest.mark.parametrize(
    "shape, message",
    [((64, 64), "2 dimensions"), ((2, 3, 4, 5, 6), "5 dimensions"), ((0, 10, 10), "empty"), ((2, 3, 4, 2), "4 dim")],
)
def test_wrong_dimensions(tmp_path, shape, message):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros(shape, np.uint8)
    with pytest.raises(VolumeError, match=message):
        read_volume(path)


def test_nan_volume(tmp_path):
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.full((4, 8, 8), np.nan, np.float32)
    with pytest.raises(VolumeError, match="no finite values"):
        read_volume(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "v.jpg"
    path.write_bytes(b"x")
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(path)
