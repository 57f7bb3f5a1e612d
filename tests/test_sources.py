"""Region-readable, untrusting volume sources: region reads, bounded reads, refusals, voxel sizes."""

from __future__ import annotations

import bz2
import gzip
import os
import sys
import time
import tracemalloc

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from conftest import shared_file
from PIL import Image

from lib.errors import UploadTooLarge, VolumeError
from lib.transforms.io import Volume, read_volume, write_volume
from lib.volumes.formats import VolumeSource, full_roi, open_source

SPACING = (0.05, 0.004, 0.004)  # ISBI 2012 ssTEM: 50 nm z, 4 nm xy, in µm
ROIS = [
    (slice(0, 6), slice(0, 40), slice(0, 48)),
    (slice(2, 5), slice(7, 33), slice(11, 47)),
    (slice(5, 6), slice(39, 40), slice(0, 1)),
    (slice(1, 1), slice(0, 40), slice(0, 48)),  # empty region
]


@pytest.fixture(scope="module")
def em() -> np.ndarray:
    """A real ssTEM crop (ISBI 2012)."""
    with h5py.File(shared_file("isbi2012_sstem.h5")) as f:
        return f["raw"][:6, :40, :48]


@pytest.fixture(scope="module")
def light_sheet() -> np.ndarray:
    """A real light-sheet crop (TRAILMAP), uint16."""
    with h5py.File(shared_file("trailmap_example_chunk_unlabeled.h5")) as f:
        return f["raw"][100:164, 100:164, 100:164]


def _write_png_stack(folder, array):
    folder.mkdir()
    for z, plane in enumerate(array):
        Image.fromarray(plane).save(folder / f"s{z:03d}.png")
    return folder


# --- region reads equal the full array's slice, every format ---------------------------------


@pytest.mark.parametrize("name", ["v.tif", "v.h5", "v.zarr", "v.n5", "v.nrrd", "v.nii.gz", "png"])
def test_region_reads_equal_full_slice(tmp_path, em, name):
    if name == "png":
        path = _write_png_stack(tmp_path / "slices", em)
    else:
        path = write_volume(tmp_path / name, Volume(em, SPACING))
    with open_source(path) as source:
        assert isinstance(source, VolumeSource)
        assert source.shape == em.shape and source.dtype == em.dtype
        full = source.read(full_roi(source.shape))
        np.testing.assert_array_equal(full, em)
        for roi in ROIS:
            np.testing.assert_array_equal(source.read(roi), em[roi])
        if name != "png":
            np.testing.assert_allclose(source.voxel_size, SPACING, rtol=1e-5)
        else:
            assert source.voxel_size is None
        assert source.dataset == ("raw" if name in ("v.h5", "v.zarr", "v.n5") else None)


@pytest.mark.parametrize(
    "kwargs", [{"tile": (32, 48), "compression": "zlib"}, {"rowsperstrip": 7, "compression": "zlib"}, {}]
)
def test_tiff_region_reads_tiled_striped_contiguous(tmp_path, light_sheet, kwargs):
    array = light_sheet[:5, :50, :60]
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, array, **kwargs)
    with open_source(path) as source:
        assert source.shape == array.shape and source.dtype == np.uint16
        for roi in [
            full_roi(array.shape),
            (slice(1, 4), slice(30, 50), slice(40, 57)),
            (slice(4, 5), slice(0, 1), slice(59, 60)),
        ]:
            np.testing.assert_array_equal(source.read(roi), array[roi])


def test_squeezed_singleton_axes_are_read_consistently(tmp_path, em):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["lead"] = em[None]
        f["trail"] = em[..., None]
        f["mask"] = em > 100
    for dataset in ("lead", "trail"):
        with open_source(path, dataset) as source:
            assert source.shape == em.shape
            np.testing.assert_array_equal(source.read(ROIS[1]), em[ROIS[1]])
    with open_source(path, "mask") as source:  # bool is reported and returned as uint8
        assert source.dtype == np.uint8
        region = source.read(ROIS[1])
        assert region.dtype == np.uint8
        np.testing.assert_array_equal(region, (em > 100)[ROIS[1]])


def test_bad_roi_is_a_programming_error(tmp_path, em):
    path = write_volume(tmp_path / "v.h5", Volume(em, SPACING))
    with open_source(path) as source:
        with pytest.raises(ValueError, match="outside"):
            source.read((slice(0, 7), slice(0, 4), slice(0, 4)))
        with pytest.raises(ValueError, match="step"):
            source.read((slice(0, 6, 2), slice(0, 4), slice(0, 4)))


# --- a region read reads only the region -----------------------------------------------------

BIG = (2000, 2000, 2000)  # 16 GB of uint16 if it were read whole
ROI16 = (slice(1010, 1026), slice(1020, 1036), slice(1030, 1046))


def _check_bounded(source, crop):
    tracemalloc.start()
    start = time.perf_counter()
    region = source.read(ROI16)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(region, crop[10:26, 20:36, 30:46])
    assert elapsed < 2.0
    assert peak < 8 * 1024**2


def test_big_sparse_zarr_region_read_is_small_and_fast(tmp_path, light_sheet):
    root = zarr.open_group(str(tmp_path / "big.zarr"), mode="w")
    array = root.create_dataset("raw", shape=BIG, chunks=(64, 64, 64), dtype=np.uint16)
    array[1000:1064, 1000:1064, 1000:1064] = light_sheet
    with open_source(tmp_path / "big.zarr") as source:
        assert source.shape == BIG and source.chunks == (64, 64, 64)
        _check_bounded(source, light_sheet)


def test_big_sparse_hdf5_region_read_is_small_and_fast(tmp_path, light_sheet):
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=BIG, chunks=(64, 64, 64), dtype=np.uint16, compression="gzip")
        ds[1000:1064, 1000:1064, 1000:1064] = light_sheet
    assert os.path.getsize(path) < 16 * 1024**2
    with open_source(path) as source:
        assert source.shape == BIG and source.chunks == (64, 64, 64)
        _check_bounded(source, light_sheet)


def test_tiff_region_read_decodes_only_the_tiles_it_needs(tmp_path, monkeypatch, light_sheet):
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, light_sheet, tile=(16, 16), compression="zlib")  # 64 planes of 4x4 tiles

    def whole_read(*args, **kwargs):
        raise AssertionError("the whole image was decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", whole_read)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", whole_read)
    monkeypatch.setattr(tifffile.TiffFrame, "asarray", whole_read)
    read = []
    original = tifffile.FileHandle.read_segments

    def spy(self, offsets, bytecounts, *args, **kwargs):
        read.extend(offsets)
        return original(self, offsets, bytecounts, *args, **kwargs)

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", spy)
    with open_source(path) as source:
        region = source.read((slice(10, 13), slice(20, 30), slice(33, 47)))
    np.testing.assert_array_equal(region, light_sheet[10:13, 20:30, 33:47])
    assert len(read) == 3 * 1 * 1  # one tile per plane: rows 16-31, columns 32-47


def test_contiguous_tiff_region_read_is_memory_mapped(tmp_path, monkeypatch, light_sheet):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, light_sheet, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("whole read"))
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("whole read"))
    with open_source(path) as source:
        np.testing.assert_array_equal(source.read(ROIS[1]), light_sheet[ROIS[1]])


def test_open_reads_no_voxels(tmp_path, monkeypatch, em):
    h5 = write_volume(tmp_path / "v.h5", Volume(em, SPACING))
    zr = write_volume(tmp_path / "v.zarr", Volume(em, SPACING))
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("voxels read while opening"))
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("voxels read while opening"))
    for path in (h5, zr):
        with open_source(path) as source:
            assert source.shape == em.shape


# --- NRRD / NIfTI: checked against the memory limit before any pixel is read -----------------


@pytest.mark.parametrize("name", ["v.nrrd", "v.nii.gz"])
def test_itk_volume_over_memory_limit_is_refused_before_reading(tmp_path, monkeypatch, em, name):
    import itk

    path = write_volume(tmp_path / name, Volume(em, SPACING))
    monkeypatch.setattr(itk, "imread", lambda *a, **k: pytest.fail("pixels read before the size check"))
    with pytest.raises(UploadTooLarge, match=r"(?s)11,520 voxels.*OME-Zarr"):
        open_source(path, max_voxels_in_memory=10_000)
    with open_source(path, max_voxels_in_memory=20_000) as source:  # under the limit: opens, reads on demand
        assert source.shape == em.shape


def test_read_volume_over_memory_limit(tmp_path, em):
    path = write_volume(tmp_path / "v.h5", Volume(em, SPACING))
    with pytest.raises(UploadTooLarge):
        read_volume(path, max_voxels_in_memory=1000)
    volume = read_volume(path, max_voxels_in_memory=20_000)
    assert volume.meta == {"dataset": "raw", "voxel_size_known": True}


def _nrrd_declaring(path, sizes: str, encoding: str, payload: bytes):
    header = f"NRRD0004\ntype: unsigned char\ndimension: {len(sizes.split())}\nsizes: {sizes}\nencoding: {encoding}\n\n"
    data = {"gzip": gzip.compress, "bzip2": bz2.compress, "raw": bytes}[encoding](payload)
    path.write_bytes(header.encode() + data)
    return path


def _nifti_declaring(path, shape: tuple[int, ...], payload: bytes, version: int = 1, dtype=np.uint8):
    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    data = header.binaryblock + b"\x00" * (int(header["vox_offset"]) - len(header.binaryblock)) + payload
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


_ZEROS = bytes(16 << 20)  # 16 MB of zeros: 16 kB of gzip, 40 bytes of bzip2


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _nrrd_declaring(d / "v.nrrd", "2000 2000 2000", "gzip", _ZEROS),
        lambda d: _nrrd_declaring(d / "v.nrrd", "2000 2000 2000", "bzip2", _ZEROS),
        lambda d: _nrrd_declaring(d / "v.nrrd", "2000 2000 2000", "raw", b"\x00" * 64),
        lambda d: _nrrd_declaring(d / "v.nrrd", "2000 1 2000 2000", "gzip", _ZEROS),  # with a size-1 axis
        lambda d: _nifti_declaring(d / "v.nii.gz", (2000, 2000, 2000), _ZEROS),
        lambda d: _nifti_declaring(d / "v.nii.gz", (2000, 2000, 2000), _ZEROS, version=2),
        lambda d: _nifti_declaring(d / "v.nii", (2000, 2000, 2000), b"\x00" * 64),
    ],
    ids=["nrrd-gzip", "nrrd-bzip2", "nrrd-raw", "nrrd-4d", "nifti1-gz", "nifti2-gz", "nifti1-raw"],
)
def test_header_voxel_count_is_refused_before_inflating(tmp_path, monkeypatch, make):
    """A tiny file declaring 8 gigavoxels is refused from its header alone: nothing is inflated, ITK never runs."""
    path = make(tmp_path)
    assert path.stat().st_size < 100_000
    monkeypatch.setitem(sys.modules, "itk", None)  # importing ITK fails: a VolumeError, not the 413, if reached
    tracemalloc.start()
    try:
        with pytest.raises(UploadTooLarge, match=r"8,000,000,000 voxels.*--conf max_voxels_in_memory"):
            open_source(path, max_voxels_in_memory=100_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # not the 16 MB of zeros behind the header, let alone 8 GB


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _nrrd_declaring(d / "v.nrrd", "3 100 100 100", "gzip", b""),  # a component axis of RGB
        lambda d: _nifti_declaring(d / "v.nii.gz", (100, 100, 100), b"", dtype=128),  # NIFTI_TYPE_RGB24
        lambda d: _nifti_declaring(d / "v.nii.gz", (100, 100, 100, 1, 3), b""),  # a vector (dim5) of 3
    ],
    ids=["nrrd-rgb", "nifti-rgb", "nifti-vector"],
)
def test_header_components_count_toward_the_limit(tmp_path, monkeypatch, make):
    monkeypatch.setitem(sys.modules, "itk", None)
    with pytest.raises(UploadTooLarge, match=r"3,000,000 voxels"):
        open_source(make(tmp_path), max_voxels_in_memory=2_000_000)


@pytest.mark.parametrize("name", ["a\x00b.nrrd", "a\nb.nii.gz", "a\x1bb.nrrd", "a\x7fb.nii"])
def test_control_characters_in_a_path_are_a_clear_refusal(tmp_path, name):
    from lib.volumes.formats import NiftiSource, NrrdSource

    reader = NrrdSource if name.endswith(".nrrd") else NiftiSource
    if "\x00" not in name:
        _nrrd_declaring(tmp_path / name, "4 4 4", "raw", bytes(64))  # exists (the content does not matter)
    for call in (open_source, reader):
        with pytest.raises(VolumeError, match="control character") as error:
            call(str(tmp_path / name), max_voxels_in_memory=1000)
        assert "\\x" in str(error.value) or "\\n" in str(error.value)  # shown escaped, not raw
        assert not any(c in str(error.value) for c in "\x00\n\x1b\x7f")


# --- refusals: nothing outside the upload is ever read ---------------------------------------


@pytest.fixture
def outside(tmp_path, em):
    """A file outside the upload folder that a malicious upload might point at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    secret = folder / "secret.bin"
    secret.write_bytes(em.tobytes())
    with h5py.File(folder / "other.h5", "w") as f:
        f["raw"] = em
    (tmp_path / "upload").mkdir()
    return folder


def test_hdf5_external_storage_is_refused(tmp_path, outside, em):
    path = tmp_path / "upload" / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "raw", shape=em.shape, dtype=em.dtype, external=[(str(outside / "secret.bin"), 0, h5py.h5f.UNLIMITED)]
        )
    with pytest.raises(VolumeError, match="external files") as error:
        open_source(path)
    assert str(tmp_path) not in str(error.value)


def test_hdf5_virtual_dataset_is_refused(tmp_path, outside, em):
    path = tmp_path / "upload" / "vds.h5"
    layout = h5py.VirtualLayout(shape=em.shape, dtype=em.dtype)
    layout[:] = h5py.VirtualSource(str(outside / "other.h5"), "raw", shape=em.shape)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("raw", layout)
    with pytest.raises(VolumeError, match="virtual"):
        open_source(path)


def test_hdf5_external_link_is_refused_anywhere(tmp_path, outside, em):
    path = tmp_path / "upload" / "link.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = h5py.ExternalLink(str(outside / "other.h5"), "raw")
    with pytest.raises(VolumeError, match="links to another file") as error:
        open_source(path)
    assert str(outside) not in str(error.value)
    with h5py.File(path, "w") as f:  # a real dataset next to a link elsewhere in the file
        f["raw"] = em
        f["group/sneaky"] = h5py.ExternalLink(str(outside / "other.h5"), "raw")
    with pytest.raises(VolumeError, match="links to another file"):
        read_volume(path, "raw")


def test_hdf5_soft_links(tmp_path, em):
    path = tmp_path / "soft.h5"
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = em
        f["alias"] = h5py.SoftLink("/volumes/raw")  # inside the file: tolerated, never listed or followed
    with open_source(path) as source:
        assert source.dataset == "volumes/raw"
    with pytest.raises(VolumeError, match="link"):
        open_source(path, "alias")
    with h5py.File(path, "a") as f:
        f["dangling"] = h5py.SoftLink("/nowhere")
    with pytest.raises(VolumeError, match="not in the file"):
        open_source(path)


def test_zarr_symlink_to_outside_is_refused(tmp_path, outside, em):
    path = tmp_path / "upload" / "v.zarr"
    zarr.open_group(str(path), mode="w").create_dataset("raw", data=em, chunks=(2, 20, 24))
    chunk = path / "raw" / "0.0.0"
    chunk.unlink()
    chunk.symlink_to(outside / "secret.bin")
    with pytest.raises(VolumeError, match="link") as error:
        open_source(path)
    assert str(tmp_path) not in str(error.value)
    chunk.unlink()  # a link to another chunk of the same array stays inside: allowed
    chunk.symlink_to(path / "raw" / "1.0.0")
    with open_source(path) as source:
        np.testing.assert_array_equal(source.read((slice(0, 2), slice(0, 20), slice(0, 24))), em[2:4, :20, :24])


@pytest.mark.parametrize("name", ["v.zarr", "v.n5"])
def test_chunk_replaced_by_a_link_after_opening_is_not_read(tmp_path, outside, em, name):
    path = write_volume(tmp_path / "upload" / name, Volume(em, SPACING))
    with open_source(path) as source:
        chunks = [
            p
            for p in (tmp_path / "upload" / name / "raw").rglob("*")
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".json")
        ]
        for chunk in chunks:
            chunk.unlink()
            chunk.symlink_to(outside / "secret.bin")
        with pytest.raises(VolumeError, match="outside"):
            source.read(ROIS[1])


def test_zarr_outside_root_is_refused(tmp_path, outside, em):
    path = write_volume(outside / "v.zarr", Volume(em, SPACING))
    with pytest.raises(VolumeError, match="not inside"):
        open_source(path, root=str(tmp_path / "upload"))
    (tmp_path / "upload" / "linked.zarr").symlink_to(path)  # a link inside root to a volume outside it
    with pytest.raises(VolumeError, match="not inside"):
        open_source(tmp_path / "upload" / "linked.zarr", root=str(tmp_path / "upload"))
    with open_source(path, root=str(outside)) as source:
        assert source.shape == em.shape


def test_zarr_codec_that_runs_code_is_refused(tmp_path):
    import numcodecs

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    root.create_dataset("raw", shape=(4, 4, 4), chunks=(2, 2, 2), dtype="u1", filters=[numcodecs.Pickle()])
    with pytest.raises(VolumeError, match="pickle"):
        open_source(tmp_path / "p.zarr")


def test_nrrd_detached_data_is_refused(tmp_path, outside, em):
    path = tmp_path / "upload" / "detached.nrrd"
    path.write_text(
        "NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 48 40 6\nencoding: raw\n"
        f"data file: {outside / 'secret.bin'}\n\n"
    )
    with pytest.raises(VolumeError, match="another file"):
        open_source(path)


def _ome_xml(tiffdata: str, root_uuid: str = ' UUID="urn:uuid:aaaa"') -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"{root_uuid}>'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
        'SizeX="48" SizeY="40" SizeZ="12" SizeC="1" SizeT="1" PhysicalSizeX="4" PhysicalSizeXUnit="nm" '
        'PhysicalSizeY="4" PhysicalSizeYUnit="nm" PhysicalSizeZ="50" PhysicalSizeZUnit="nm">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiffdata}</Pixels></Image></OME>'
    )


def test_multi_file_ome_tiff_is_refused(tmp_path, em):
    xml = _ome_xml(
        '<TiffData FirstZ="0" IFD="0" PlaneCount="6"><UUID FileName="part0.ome.tif">urn:uuid:aaaa</UUID></TiffData>'
        '<TiffData FirstZ="6" IFD="0" PlaneCount="6"><UUID FileName="../../etc/part1.ome.tif">urn:uuid:bbbb</UUID>'
        "</TiffData>"
    )
    path = tmp_path / "part0.ome.tif"
    tifffile.imwrite(path, em, description=xml, metadata=None)
    with pytest.raises(VolumeError, match="multi-file"):
        open_source(path)


@pytest.mark.parametrize("root_uuid", [' UUID="urn:uuid:aaaa"', ""])
def test_single_file_ome_tiff_with_uuids_is_read(tmp_path, em, root_uuid):
    xml = _ome_xml(
        '<TiffData FirstZ="0" IFD="0" PlaneCount="6"><UUID FileName="original.ome.tif">urn:uuid:aaaa</UUID></TiffData>',
        root_uuid,
    ).replace('SizeZ="12"', 'SizeZ="6"')
    path = tmp_path / "renamed.ome.tif"  # stored under another name than the one it was written with
    tifffile.imwrite(path, em, description=xml, metadata=None)
    with open_source(path) as source:
        np.testing.assert_array_equal(source.read(ROIS[1]), em[ROIS[1]])
        assert source.voxel_size == pytest.approx(SPACING)


# --- TIFF voxel size -------------------------------------------------------------------------


def _tiff(tmp_path, array, **kwargs):
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, array, **kwargs)
    return path


def test_tiff_72_dpi_is_unknown(tmp_path, em):
    path = _tiff(tmp_path, em, resolution=(72, 72), resolutionunit="INCH")
    with open_source(path) as source:
        assert source.voxel_size is None
    volume = read_volume(path)
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.meta["voxel_size_known"] is False


def test_tiff_without_resolution_is_unknown(tmp_path, em):
    with open_source(_tiff(tmp_path, em)) as source:  # tifffile writes 1/1 with unit none
        assert source.voxel_size is None


def test_tiff_resolution_in_centimetres(tmp_path, em):
    path = _tiff(tmp_path, em, resolution=(1e4, 5e3), resolutionunit="CENTIMETER")  # 1 µm x, 2 µm y
    with open_source(path) as source:
        assert source.voxel_size == pytest.approx((1.0, 2.0, 1.0))  # z unstated: taken as x
    assert read_volume(path).meta["voxel_size_known"] is True


def test_tiff_resolution_in_inches(tmp_path, em):
    path = _tiff(tmp_path, em, resolution=(25400, 25400), resolutionunit="INCH")  # 1 µm, not a dpi default
    with open_source(path) as source:
        assert source.voxel_size == pytest.approx((1.0, 1.0, 1.0))


def test_imagej_tiff_units(tmp_path, em):
    path = _tiff(tmp_path, em, imagej=True, resolution=(1 / 0.2, 1 / 0.3), metadata={"spacing": 2.5, "unit": "um"})
    with open_source(path) as source:
        assert source.voxel_size == pytest.approx((2.5, 0.3, 0.2))
    path = _tiff(tmp_path, em, imagej=True, resolution=(1 / 4, 1 / 4), metadata={"unit": "nm"})
    with open_source(path) as source:  # no spacing: ImageJ's voxel depth of 1 unit
        assert source.voxel_size == pytest.approx((0.001, 0.004, 0.004))
    path = _tiff(tmp_path, em, imagej=True, resolution=(2, 2), metadata={"unit": "micron", "spacing": 3})
    with open_source(path) as source:
        assert source.voxel_size == pytest.approx((3.0, 0.5, 0.5))
    path = _tiff(tmp_path, em, imagej=True, resolution=(2, 2), metadata={"unit": "pixel"})
    with open_source(path) as source:  # "pixel" is no length; unit none in the tags
        assert source.voxel_size is None


def test_container_without_voxel_size_is_unknown(tmp_path, em):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = em
    with open_source(path) as source:
        assert source.voxel_size is None
    assert read_volume(path).meta == {"dataset": "raw", "voxel_size_known": False}


# --- wrong shapes and types ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, em: tifffile.imwrite(p / "v.tif", em[0]), "2 dimensions"),
        (
            lambda p, em: tifffile.imwrite(
                p / "v.tif", np.stack([em, em], axis=1), imagej=True, metadata={"axes": "ZCYX"}
            ),
            "4 dimensions",
        ),
        (lambda p, em: h5py.File(p / "v.h5", "w").create_dataset("raw", data=em[:0]), "empty"),
        (lambda p, em: zarr.open_group(str(p / "v.zarr"), mode="w").create_dataset("raw", data=em[:, :0]), "empty"),
        (lambda p, em: h5py.File(p / "v.h5", "w").create_dataset("raw", data=em.astype(np.complex64)), "data type"),
        (lambda p, em: Image.fromarray(em[0]).save(_mkdir(p / "png") / "a.png") or None, None),
    ],
)
def test_unusable_volumes_are_refused(tmp_path, em, make, message):
    made = make(tmp_path, em)
    if hasattr(made, "file"):
        made.file.close()
    path = next(p for p in tmp_path.iterdir())
    if message is None:  # a single PNG slice is a 1-slice volume
        with open_source(path) as source:
            assert source.shape == (1, *em.shape[1:])
        return
    with pytest.raises(VolumeError, match=message) as error:
        open_source(path)
    assert str(tmp_path) not in str(error.value)


def _mkdir(path):
    path.mkdir()
    return path


def test_damaged_files_name_only_the_basename(tmp_path):
    for name in ("bad.h5", "bad.tif", "bad.nrrd", "bad.nii.gz"):
        path = tmp_path / name
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64 if name.endswith(".h5") else b"II*\x00" + b"\x00" * 64)
        with pytest.raises(VolumeError, match=name.replace(".", r"\.")) as error:
            open_source(path)
        assert str(tmp_path) not in str(error.value)
    with pytest.raises(VolumeError, match="file not found: missing.h5"):
        open_source(tmp_path / "missing.h5")
