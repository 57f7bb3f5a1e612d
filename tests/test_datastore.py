"""The microscopy datastore without a server: every format is listed, served as NRRD, kept as is."""

from __future__ import annotations

import numpy as np
import pytest

from lib.datastore import MicroscopyDatastore
from lib.errors import InvalidRequest, VolumeError
from lib.transforms.io import FORMATS, Volume, read_volume, write_volume

VOLUME = Volume(np.arange(5 * 12 * 16, dtype=np.uint16).reshape(5, 12, 16), (0.05, 0.004, 0.004))


@pytest.fixture
def datastore(tmp_path):
    return MicroscopyDatastore(str(tmp_path / "studies"), str(tmp_path / "views"))


@pytest.mark.parametrize("ext", list(FORMATS))
def test_files_on_disk_are_listed_and_served_with_spacing(tmp_path, ext):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_volume(studies / f"vol{ext}", VOLUME)
    ds = MicroscopyDatastore(str(studies), str(tmp_path / "views"))
    assert ds.list_images() == ["vol"]
    served = ds.get_image_uri("vol")
    assert served.endswith((".nrrd", ".nii", ".nii.gz"))
    volume = read_volume(served)
    np.testing.assert_array_equal(volume.array, VOLUME.array)
    assert volume.spacing == pytest.approx(VOLUME.spacing)
    info = ds.get_image_info("vol")
    assert info["shape"] == [5, 12, 16] and info["name"] == served.split("/")[-1]
    assert info["original_path"].endswith(f"vol{ext}")


@pytest.mark.parametrize("ext", [".tif", ".h5", ".zarr", ".n5", ".nii.gz"])
def test_add_image_keeps_original_and_removes_cleanly(tmp_path, datastore, ext):
    source = write_volume(tmp_path / f"upload{ext}", VOLUME)
    assert datastore.add_image("stack", source, {}) == "stack"
    original = tmp_path / "studies" / f"stack{ext}"
    assert original.exists()
    assert datastore.get_image_info("stack")["spacing_um"] == pytest.approx(list(VOLUME.spacing))
    datastore.remove_image("stack")
    assert not original.exists()
    assert datastore.list_images() == []


def test_failed_add_leaves_nothing(tmp_path, datastore):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(VolumeError):
        datastore.add_image("bad", str(bad), {})
    assert datastore.list_images() == []
    leftovers = [p.name for p in (tmp_path / "studies").iterdir() if p.name not in ("labels", "datastore_v2.json")]
    assert leftovers in ([], [".lock"])
    assert list((tmp_path / "views").iterdir()) == []


def test_invalid_ids_are_refused(tmp_path, datastore):
    source = write_volume(tmp_path / "v.tif", VOLUME)
    for bad in ("../x", "a/b", "..", ".hidden", "x" * 200):
        with pytest.raises(InvalidRequest):
            datastore.add_image(bad, source, {})


def test_label_must_match_image_shape(tmp_path, datastore):
    datastore.add_image("stack", write_volume(tmp_path / "v.tif", VOLUME), {})
    wrong = write_volume(tmp_path / "l.nrrd", Volume(np.zeros((5, 12, 15), np.uint8)))
    with pytest.raises(VolumeError, match="does not match"):
        datastore.save_label("stack", wrong, "final", {})
    right = write_volume(tmp_path / "l2.nrrd", Volume(np.ones((5, 12, 16), np.uint8)))
    datastore.save_label("stack", right, "final", {"client_id": "a"})
    (item,) = datastore.datalist()
    assert read_volume(item["label"]).array.sum() == 5 * 12 * 16
    assert read_volume(item["image"]).shape == (5, 12, 16)
