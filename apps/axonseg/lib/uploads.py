"""Where uploaded files go while a request uses them, and the disk limits they must respect.

Uploads go to a folder of their own in the shared work directory (a worker on another machine can read
them), under the client's file name (messages about the file name what the client sent). A file that would
leave less than ``min_free_bytes`` on the work directory's disk is refused with 507 before and while it is
written, and removed: one upload cannot fill the disk that holds the datastore and the database. Raw request
bodies (STOW-RS) are streamed there the same way (:func:`save_stream`), never held in memory.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterable

from fastapi import UploadFile

from .errors import InsufficientStorage, InvalidRequest
from .params import shown

MAX_NAME_LENGTH = 200
_CHUNK = 1 << 20
_CHECK_EVERY = 64 * _CHUNK  # statvfs per 64 MB written


def free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def _refuse(folder: str, size: int, min_free_bytes: int) -> InsufficientStorage:
    return InsufficientStorage(
        f"the server's disk is too full for this upload ({size / 1e6:.1f} MB; {free_bytes(folder) / 1e9:.2f} GB "
        f"free, {min_free_bytes / 1e9:.2f} GB must stay free; --conf min_free_gb). Nothing was stored."
    )


def _new_upload(workdir: str, min_free_bytes: int, declared: int, name: str) -> tuple[str, str]:
    """The uploads folder and a fresh path in a folder of its own under it; 507 if ``declared`` bytes would not fit."""
    name = upload_name(name)
    root = os.path.join(workdir, "uploads")
    os.makedirs(root, exist_ok=True)
    if free_bytes(root) - declared < min_free_bytes:
        raise _refuse(root, declared, min_free_bytes)
    folder = os.path.join(root, uuid.uuid4().hex)
    os.makedirs(folder)
    return root, os.path.join(folder, name)


def upload_name(filename: str | None) -> str:
    """The client's file name as stored: its last component (its extension tells the format), or 400 if it
    cannot be a file name (a NUL, a control character, over :data:`MAX_NAME_LENGTH` characters)."""
    name = os.path.basename((filename or "").replace("\\", "/")).lstrip(".") or "upload.nii.gz"
    if len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidRequest(
            f"the file name {shown(filename)} cannot be stored: at most {MAX_NAME_LENGTH} characters and no "
            "control characters; rename the file"
        )
    return name


def _check_floor(root: str, written: int, chunk: int, min_free_bytes: int) -> None:
    """507 once the disk is down to ``min_free_bytes`` (looked at every :data:`_CHECK_EVERY` bytes written)."""
    if written % _CHECK_EVERY < chunk and free_bytes(root) < min_free_bytes:
        raise _refuse(root, written, min_free_bytes)


def save_upload(file: UploadFile, workdir: str, min_free_bytes: int) -> str:
    """Write ``file`` under ``<workdir>/uploads/<random>/``; returns its path (:func:`remove_upload` it)."""
    root, path = _new_upload(workdir, min_free_bytes, file.size or 0, file.filename or "")
    written = 0
    try:
        with open(path, "wb") as f:
            while chunk := file.file.read(_CHUNK):
                f.write(chunk)
                written += len(chunk)
                _check_floor(root, written, len(chunk), min_free_bytes)
    except BaseException:
        remove_upload(path)
        raise
    return path


async def save_stream(
    chunks: AsyncIterable[bytes], workdir: str, min_free_bytes: int, name: str, declared: int = 0
) -> str:
    """Write a request body as it arrives (``request.stream()``) under ``<workdir>/uploads/<random>/``; returns
    its path (:func:`remove_upload` it). The body is never held in memory; the partial file is removed on any
    error, a disconnect or the upload limit's 413 included. ``declared``: the Content-Length, if one was sent."""
    root, path = _new_upload(workdir, min_free_bytes, declared, name)
    written = 0
    try:
        with open(path, "wb") as f:
            async for chunk in chunks:
                if chunk:
                    f.write(chunk)
                    written += len(chunk)
                    _check_floor(root, written, len(chunk), min_free_bytes)
    except BaseException:
        remove_upload(path)
        raise
    return path


def remove_upload(path: str) -> None:
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def check_quota(used: int, adding: int, quota: int, owner: str) -> None:
    if used + adding > quota:
        raise InsufficientStorage(
            f"'{owner}' has uploaded {used / 1e9:.2f} GB of images; {adding / 1e6:.1f} MB more exceeds the quota of "
            f"{quota / 1e9:.2f} GB per user (--conf upload_quota_gb). Remove images or ask an admin."
        )
