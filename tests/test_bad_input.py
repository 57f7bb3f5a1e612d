"""Bad requests get a 4xx with a readable message; the server keeps serving and stores nothing."""

from __future__ import annotations

import io

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
    assert requests.get(f"{server.url}/datastore/image", params={"image": image_id}).status_code == 404


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
    assert (server.studies / "good_after_bad.tif").read_bytes() == GOOD_TIFF
    requests.delete(f"{server.url}/datastore/", params={"id": "good_after_bad"})
    assert not (server.studies / "good_after_bad.tif").exists()


def test_bad_infer_params(server, unchanged):
    reply = requests.post(
        f"{server.url}/infer/axon", params={"image": "gala_fibsem"}, data={"params": '{"threshold": "high"}'}
    )
    _assert_error(reply, 400, "threshold must be a number")
