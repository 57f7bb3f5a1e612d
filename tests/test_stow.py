"""STOW-RS bodies are bounded: refused by Content-Type before they are read, streamed to a file (never held in
memory), parsed from a memory map, and removed afterwards. No server: the route runs in a minimal app."""

from __future__ import annotations

import asyncio
import io
import os
import tracemalloc
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lib.errors import AxonSegError, InsufficientStorage, InvalidRequest, UnsupportedMediaType
from lib.uploads import save_stream

BOUNDARY = "axonsegtestboundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def _instance() -> tuple[bytes, str]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SEG
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, write_like_original=False)
    return buffer.getvalue(), str(ds.SOPInstanceUID)


def _body(parts: list[bytes], epilogue: bytes = b"") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode() + epilogue


async def _chunks(data: bytes, size: int = 65536, fail_at: int | None = None):
    for at in range(0, len(data), size):
        if fail_at is not None and at >= fail_at:
            raise ConnectionError("client went away")
        yield data[at : at + size]


def _leftovers(workdir) -> list[str]:
    uploads = os.path.join(workdir, "uploads")
    return [os.path.join(d, f) for d, _, files in os.walk(uploads) for f in files] if os.path.isdir(uploads) else []


# --- the streaming helper ---------------------------------------------------------------------


def test_save_stream_writes_the_chunks_and_removes_a_partial_file(tmp_path):
    data = os.urandom(300_000)
    path = asyncio.run(save_stream(_chunks(data), str(tmp_path), 0, "stow.multipart"))
    assert open(path, "rb").read() == data and path.startswith(str(tmp_path / "uploads"))
    assert os.path.basename(path) == "stow.multipart"
    with pytest.raises(ConnectionError):
        asyncio.run(save_stream(_chunks(data, fail_at=100_000), str(tmp_path), 0, "stow.multipart"))
    assert _leftovers(tmp_path) == [path]  # only the first, finished one
    with pytest.raises(InsufficientStorage, match="min_free_gb"):  # the disk floor, before a byte is written
        asyncio.run(save_stream(_chunks(data), str(tmp_path), 10**18, "stow.multipart"))
    assert _leftovers(tmp_path) == [path]


# --- parsing a saved body ---------------------------------------------------------------------


def test_saved_body_is_parsed_in_place(tmp_path):
    from lib.dicomweb.seg import stow_instances, stow_parts

    (a, uid_a), (b, uid_b) = _instance(), _instance()
    path = tmp_path / "body"
    path.write_bytes(_body([a, b], epilogue=os.urandom(50 << 20)))  # 50 MB of junk after the closing delimiter
    tracemalloc.start()
    try:
        instances = stow_instances(str(path), CONTENT_TYPE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [str(ds.SOPInstanceUID) for ds in instances] == [uid_a, uid_b]
    assert peak < 5_000_000  # the body is mapped, not read
    assert stow_parts(_body([a, b]), CONTENT_TYPE) == [a, b]  # in-memory bodies (WADO-RS replies) still split


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (None, "holds no DICOM instance"),  # 50 MB of junk without a delimiter
        (f"--{BOUNDARY}\r\nno header end".encode(), "no header end"),
        (f"--{BOUNDARY}--\r\n".encode(), "holds no DICOM instance"),
        (f"--{BOUNDARY}\r\n\r\n".encode() * 1_000_000, "more than 1000 parts"),  # a million empty parts
    ],
)
def test_junk_bodies_are_400_without_reading_them_into_memory(tmp_path, body, message):
    from lib.dicomweb.seg import stow_instances

    path = tmp_path / "body"
    path.write_bytes(os.urandom(50 << 20) if body is None else body)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match=message):
            stow_instances(str(path), CONTENT_TYPE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    "content_type, error",
    [
        ("application/dicom", UnsupportedMediaType),
        ("", UnsupportedMediaType),
        ('multipart/related; type="application/dicom"', InvalidRequest),
        ('multipart/related; boundary=" "', InvalidRequest),
    ],
)
def test_content_type_is_checked_alone(content_type, error):
    from lib.dicomweb.seg import stow_delimiter

    with pytest.raises(error):
        stow_delimiter(content_type)
    assert stow_delimiter('Multipart/Related; Boundary="abc"; type="application/dicom"') == b"--abc"


# --- the route, in a minimal app --------------------------------------------------------------


@pytest.fixture
def stow(tmp_path, monkeypatch):
    """A client of the STOW-RS route alone, behind the upload limit (1 MB), storing nothing: its ``_stow`` parses
    the saved body and answers the SOP instance UIDs."""
    from lib.api import dicomweb as routes
    from lib.api.install import UploadLimit, _axonseg_error
    from lib.dicomweb.seg import stow_instances

    def fake_stow(path: str, content_type: str, study_uid: str | None) -> JSONResponse:
        assert os.path.isfile(path) and path.startswith(str(tmp_path / "uploads"))
        instances = stow_instances(path, content_type)
        if not all("SOPInstanceUID" in ds for ds in instances):  # the real one asks for much more
            raise InvalidRequest("a part has no SOP instance UID")
        return JSONResponse([str(ds.SOPInstanceUID) for ds in instances])

    monkeypatch.delenv("AXONSEG_DICOMWEB_URL", raising=False)
    monkeypatch.setattr(routes, "DicomWeb", lambda *args: SimpleNamespace(stow=fake_stow))
    app = FastAPI()
    settings = SimpleNamespace(workdir=str(tmp_path), min_free_bytes=0, dicomweb_url=None, max_voxels_in_memory=1)
    app.state.services = SimpleNamespace(settings=settings, db=None, datastore=None, dicom_frames=None)
    app.include_router(routes.router)
    app.add_exception_handler(AxonSegError, _axonseg_error)
    app.add_middleware(UploadLimit, max_bytes=1 << 20)
    with TestClient(app) as client:
        yield client


def _post(client: TestClient, content, content_type: str = CONTENT_TYPE):
    return client.post("/proxy/dicom/wado/studies", content=content, headers={"Content-Type": content_type})


def test_route_refuses_a_wrong_content_type_before_reading_the_body(stow, tmp_path, monkeypatch):
    from lib.api import dicomweb as routes

    async def never(*args, **kwargs):
        pytest.fail("the body was read")

    monkeypatch.setattr(routes, "save_stream", never)
    reply = _post(stow, _body([_instance()[0]]), "application/dicom")
    assert reply.status_code == 415 and "multipart/related" in reply.json()["detail"]
    reply = _post(stow, _body([_instance()[0]]), "multipart/related")
    assert reply.status_code == 400 and "boundary" in reply.json()["detail"]


def test_route_streams_parses_and_removes_the_body(stow, tmp_path):
    (a, uid_a), (b, uid_b) = _instance(), _instance()
    reply = _post(stow, _body([a, b]))
    assert reply.status_code == 200 and reply.json() == [uid_a, uid_b]
    for junk, message in [(os.urandom(500_000), "no DICOM instance"), (_body([b"not dicom"]), "no SOP instance")]:
        reply = _post(stow, junk)
        assert reply.status_code == 400 and message in reply.json()["detail"]
    assert _leftovers(tmp_path) == []


def test_route_over_the_upload_limit_is_413_and_leaves_nothing(stow, tmp_path, monkeypatch):
    from lib.api import dicomweb as routes

    streamed = []

    async def spy(*args, **kwargs):
        streamed.append(args[1:])
        return await save_stream(*args, **kwargs)

    monkeypatch.setattr(routes, "save_stream", spy)
    big = os.urandom(3 << 20)
    assert _post(stow, big).status_code == 413  # declared (Content-Length): refused before the route
    assert not streamed
    reply = _post(stow, (big[i : i + 65536] for i in range(0, len(big), 65536)))  # chunked: counted as it comes
    assert reply.status_code == 413 and "max_upload_mb" in reply.json()["detail"]
    assert streamed and _leftovers(tmp_path) == []  # the partial file was written, then removed
