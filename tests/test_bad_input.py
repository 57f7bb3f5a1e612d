"""Bad requests get a 4xx with a readable message; the server keeps serving and stores nothing."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import requests
import tifffile


def _h5_bytes(array) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f["raw"] = array
    return buffer.getvalue()


def _tiff_bytes(array) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


GOOD_TIFF = _tiff_bytes(np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8))

BAD_UPLOADS = {
    "corrupt tiff": ("x.tif", b"II*\x00" + bytes(200), 422, "tiff"),
    "truncated tiff": ("x.tif", GOOD_TIFF[: len(GOOD_TIFF) // 3], 422, "tiff"),
    "not an image": ("x.tif", b"hello world", 422, "tiff"),
    "2d array": ("x.h5", _h5_bytes(np.zeros((64, 64), np.uint8)), 422, "2 dimensions"),
    "5d array": ("x.h5", _h5_bytes(np.zeros((2, 2, 4, 8, 8), np.uint8)), 422, "5 dimensions"),
    "zero-size volume": ("x.h5", _h5_bytes(np.zeros((0, 8, 8), np.uint8)), 422, "empty"),
    "all-NaN volume": ("x.h5", _h5_bytes(np.full((4, 8, 8), np.nan, np.float32)), 422, "no finite values"),
    "unsupported format": ("x.jpg", b"\xff\xd8\xff", 422, "unsupported file type"),
}


@pytest.fixture
def unchanged(server):
    """Asserts the datastore's files and image list are the same after the test, and the server is up."""
    files, images = server.files(), requests.get(f"{server.url}/datastore/?output=all").json()["objects"].keys()
    yield
    assert server.alive()
    assert server.files() == files
    assert requests.get(f"{server.url}/datastore/?output=all").json()["objects"].keys() == images


def _assert_error(reply: requests.Response, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert words.lower() in detail.lower(), detail


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload(server, unchanged, case):
    name, content, status, words = BAD_UPLOADS[case]
    reply = requests.put(f"{server.url}/datastore/", params={"image": "bad_upload"}, files={"file": (name, content)})
    _assert_error(reply, status, words)


def test_upload_over_size_limit(server, unchanged):
    from conftest import MAX_UPLOAD_MB

    content = bytes(int((MAX_UPLOAD_MB + 1) * 1e6))
    reply = requests.put(f"{server.url}/datastore/", params={"image": "huge"}, files={"file": ("huge.tif", content)})
    _assert_error(reply, 413, "exceeds the server limit")


def test_chunked_upload_over_size_limit(server, unchanged):
    from conftest import MAX_UPLOAD_MB

    def chunks():  # no Content-Length: the limit must hold while streaming
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="huge.tif"\r\n\r\n'
        for _ in range(MAX_UPLOAD_MB + 2):
            yield bytes(1_000_000)
        yield b"\r\n--xyz--\r\n"

    reply = requests.put(
        f"{server.url}/datastore/", params={"image": "huge"}, data=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    _assert_error(reply, 413, "exceeds the server limit")


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "/etc/passwd", "a/b", "..", ".hidden"])
def test_path_like_image_ids(server, unchanged, image_id):
    for reply in (
        requests.post(f"{server.url}/infer/axon", params={"image": image_id}),
        requests.put(f"{server.url}/datastore/", params={"image": image_id}, files={"file": ("v.tif", GOOD_TIFF)}),
        requests.put(
            f"{server.url}/datastore/label", params={"image": image_id}, files={"label": ("l.tif", GOOD_TIFF)}
        ),
    ):
        assert reply.status_code == 400, reply.text
        assert "invalid image id" in reply.json()["detail"]
    assert requests.get(f"{server.url}/datastore/image", params={"image": image_id}).status_code == 400


def test_unknown_model(server, unchanged):
    reply = requests.post(f"{server.url}/infer/neuron_soma", params={"image": "gala_fibsem"})
    _assert_error(reply, 404, "unknown model 'neuron_soma'")
    reply = requests.post(f"{server.url}/train/neuron_soma", json={})
    assert 400 <= reply.status_code < 500


def test_missing_image(server, unchanged):
    _assert_error(
        requests.post(f"{server.url}/infer/axon", params={"image": "no_such_volume"}), 404, "not in the datastore"
    )
    assert requests.get(f"{server.url}/datastore/image", params={"image": "no_such_volume"}).status_code == 404
    reply = requests.put(f"{server.url}/datastore/label", params={"image": "no_such_volume"},
                         files={"label": ("l.tif", GOOD_TIFF)})  # fmt: skip
    _assert_error(reply, 404, "not in the datastore")


def test_label_with_wrong_shape(server, unchanged):
    reply = requests.put(f"{server.url}/datastore/label", params={"image": "gala_fibsem"},
                         files={"label": ("l.tif", GOOD_TIFF)})  # fmt: skip
    _assert_error(reply, 422, "does not match image")


def test_corrupt_label(server, unchanged):
    reply = requests.put(f"{server.url}/datastore/label", params={"image": "gala_fibsem"},
                         files={"label": ("l.nrrd", b"NRRD0004\ngarbage")})  # fmt: skip
    _assert_error(reply, 422, "cannot read")


def test_duplicate_image_id(server, unchanged):
    reply = requests.put(
        f"{server.url}/datastore/", params={"image": "gala_fibsem"}, files={"file": ("v.tif", GOOD_TIFF)}
    )
    _assert_error(reply, 400, "already exists")


def test_bad_infer_upload(server, unchanged):
    reply = requests.post(f"{server.url}/infer/axon", files={"file": ("v.h5", _h5_bytes(np.zeros((8, 8), np.uint8)))})
    _assert_error(reply, 422, "2 dimensions")


def test_good_upload_after_errors(server):
    reply = requests.put(f"{server.url}/datastore/", params={"image": "good_after_bad"},
                         files={"file": ("v.tif", GOOD_TIFF)})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert (server.workdir / "volumes" / "good_after_bad.ome.zarr" / "0" / ".zarray").exists()
    served = requests.get(f"{server.url}/datastore/image", params={"image": "good_after_bad"})
    assert served.status_code == 200 and served.headers["content-disposition"].endswith('good_after_bad.nrrd"')
    requests.delete(f"{server.url}/datastore/", params={"id": "good_after_bad"})
    assert not (server.workdir / "volumes" / "good_after_bad.ome.zarr").exists()


def _h5_external_bytes(tmp_path, target) -> bytes:
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", shape=(4, 16, 16), dtype=np.uint8, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
    return path.read_bytes()


def _h5_link_bytes(tmp_path, target) -> bytes:
    path = tmp_path / "link.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = h5py.ExternalLink(str(target), "raw")
    return path.read_bytes()


def _h5_virtual_bytes(tmp_path, target) -> bytes:
    path = tmp_path / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(4, 16, 16), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(target), "raw", shape=(4, 16, 16))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("raw", layout)
    return path.read_bytes()


@pytest.mark.parametrize("make", [_h5_external_bytes, _h5_link_bytes, _h5_virtual_bytes])
def test_hdf5_that_reads_other_files_is_refused(server, unchanged, tmp_path, make):
    """A small upload whose dataset lives in another file on the server must not be read."""
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["raw"] = np.full((4, 16, 16), 7, np.uint8)
    content = make(tmp_path, secret)
    assert len(content) < 20_000
    reply = requests.put(f"{server.url}/datastore/", params={"image": "sneaky"}, files={"file": ("x.h5", content)})
    _assert_error(reply, 422, "x.h5")
    assert str(tmp_path) not in reply.json()["detail"]  # no server path in the message


def test_tiny_file_declaring_a_huge_volume_is_refused(server, unchanged, tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 1.4 KB on disk, 64 Gvox declared
        f.create_dataset("raw", shape=(4000, 4000, 4000), dtype=np.uint8, chunks=(64, 64, 64))
    reply = requests.put(f"{server.url}/datastore/", params={"image": "huge"},
                         files={"file": ("huge.h5", path.read_bytes())})  # fmt: skip
    _assert_error(reply, 413, "holds only")


def test_image_info_cannot_overwrite_geometry(server, unchanged):
    for field in ("parent", "offset", "dataset", "shape"):
        reply = requests.put(f"{server.url}/datastore/image/info", params={"image": "gala_fibsem"},
                             data={"info": f'{{"{field}": "other"}}'})  # fmt: skip
        _assert_error(reply, 400, "set by the server")
    info = requests.get(f"{server.url}/datastore/image/info", params={"image": "gala_fibsem"}).json()
    assert info["offset"] == [0, 0, 0] and info["shape"] == [50, 100, 200] and "parent" not in info


def test_label_of_a_structure_the_image_cannot_carry(server, unchanged):
    label = _tiff_bytes(np.zeros((50, 100, 200), np.uint8))
    reply = requests.put(f"{server.url}/datastore/label", params={"image": "gala_fibsem"},
                         data={"params": '{"model": "axon"}'}, files={"label": ("l.tif", label)})  # fmt: skip
    _assert_error(reply, 400, "can carry")


BAD_PARAMS = [  # (endpoint, body, words of the message): every one is refused by the API, before any work
    ("infer", {"threshold": "high"}, "threshold must be a number"),
    ("infer", {"threshold": 1.5}, "threshold must be a number in [0, 1] for 'threshold' post-processing, not 1.5"),
    ("infer", {"min_size": 10**8}, "min_size must be an integer in [0, 10000000]"),
    ("infer", {"min_size": 2.5}, "min_size must be an integer"),
    ("infer", {"min_size": [1]}, "not [1]"),
    ("infer", {"tta": 4}, "tta must be one of 1, 8, 16"),
    ("infer", {"postprocessing": "bilateral", "radius": 50}, "radius must be an integer in [0, 16]"),
    ("infer", {"postprocessing": "bilateral", "sigma_spatial": 0}, "sigma_spatial must be a number in (0, 4]"),
    ("infer", {"postprocessing": "hysteresis", "low": 0.99}, "low < high"),
    ("infer", {"postprocessing": "watershed", "min_distance": 0}, "min_distance must be an integer in [1, 32]"),
    ("infer", {"postprocessing": ["threshold"]}, "unknown post-processing"),
    ("infer", {"skeleton": "maybe"}, "skeleton must be true or false"),
    ("infer", {"device": "banana"}, "device must be auto, cpu, cuda or cuda:N"),
    ("batch", {"images": ["gala_fibsem"], "min_size": -1}, "min_size must be an integer in [0, 10000000]"),
    ("batch", {"images": ["gala_fibsem"], "tta": "x"}, "tta must be one of 1, 8, 16"),
    ("volume", {"sw_batch_size": 0}, "sw_batch_size must be an integer in [1, 32], not 0"),
    ("volume", {"sw_batch_size": "2; drop"}, "sw_batch_size must be an integer"),
    ("volume", {"blocks_per_job": -1}, "blocks_per_job must be an integer in [0, 1024]"),
    ("volume", {"roi": {"offset": [-1, 0, 0], "shape": [1, 1, 1]}}, "roi offset[0] must be an integer in [0, 100]"),
    ("volume", {"roi": {"offset": [0, 0, 0], "shape": [1.5, 1, 1]}}, "roi shape[0] must be an integer"),
    ("volume", {"amp": "yes"}, "amp must be true or false"),
    ("volume", {"postprocessing": "bilateral", "radius": 50}, "radius must be an integer in [0, 16]"),
    ("score", {"model": "axon", "samples": 10**6}, "samples must be an integer in [1, 64]"),
    ("score", {"model": "axon", "rate": 1}, "rate must be a number in [0, 1)"),
    ("score", {"model": "axon", "samples": "many"}, "samples must be an integer"),
]


def _job_ids(server) -> set[str]:
    overview = requests.get(f"{server.url}/jobs/", timeout=30).json()["queues"]
    return {job for queue in overview.values() for ids in queue["jobs"].values() for job in ids}


def test_bad_infer_params(server, unchanged):
    """Out-of-bound infer, batch, whole-volume and scoring params: 400 naming the parameter, its range and
    the value, and nothing queued (no job id appears in GET /jobs/)."""
    before = _job_ids(server)
    for endpoint, body, words in BAD_PARAMS:
        if endpoint == "infer":
            reply = requests.post(
                f"{server.url}/infer/axon", params={"image": "gala_fibsem"}, data={"params": json.dumps(body)}
            )
        else:
            path = {"batch": "batch/infer/axon", "volume": "volumes/trailmap_original/segment/axon"}
            url = f"{server.url}/{path.get(endpoint, 'scoring/epistemic')}"
            reply = requests.post(url, json=body, timeout=30)
        assert reply.status_code == 400, (endpoint, body, reply.text)
        assert words in reply.json()["detail"], (endpoint, body, reply.json()["detail"])
    assert not _job_ids(server) - before  # (ids of earlier tests' finished jobs may expire meanwhile)
    # values at the bounds, as text the way Slicer sends them back, pass the API and the worker alike
    at_bounds = {"postprocessing": "hysteresis", "high": "1", "low": 0, "min_size": "10000000", "tta": "1",
                 "device": "auto", "skeleton": "false", "client_id": "bounds", "save_label": False}  # fmt: skip
    reply = requests.post(
        f"{server.url}/infer/axon", params={"image": "gala_fibsem", "output": "json"},
        data={"params": json.dumps(at_bounds)}, timeout=300,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json()["postprocessing"] == {"method": "hysteresis", "high": 1.0, "low": 0.0, "min_size": 10**7,
                                              "skeleton": False}  # fmt: skip
