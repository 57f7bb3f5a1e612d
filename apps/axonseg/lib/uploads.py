"""Where uploaded files go while a request uses them, and the disk limits they must respect.

Uploads go to a folder of their own in the shared work directory (a worker on another machine can read
them), under the client's file name (messages about the file name what the client sent). A file that would
leave less than ``min_free_bytes`` on the work directory's disk is refused with 507 before and while it is
written, and removed: one upload cannot fill the disk that holds the datastore and the database.
"""

from __future__ import annotations

import os
import shutil
import uuid

from fastapi import UploadFile

from .errors import InsufficientStorage

_CHUNK = 1 << 20
_CHECK_EVERY = 64 * _CHUNK  # statvfs per 64 MB written


def free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def _refuse(folder: str, size: int, min_free_bytes: int) -> InsufficientStorage:
    return InsufficientStorage(
        f"the server's disk is too full for this upload ({size / 1e6:.1f} MB; {free_bytes(folder) / 1e9:.2f} GB "
        f"free, {min_free_bytes / 1e9:.2f} GB must stay free; --conf min_free_gb). Nothing was stored."
    )


def save_upload(file: UploadFile, workdir: str, min_free_bytes: int) -> str:
    """Write ``file`` under ``<workdir>/uploads/<random>/``; returns its path (:func:`remove_upload` it)."""
    root = os.path.join(workdir, "uploads")
    os.makedirs(root, exist_ok=True)
    declared = file.size or 0
    if free_bytes(root) - declared < min_free_bytes:
        raise _refuse(root, declared, min_free_bytes)
    folder = os.path.join(root, uuid.uuid4().hex)
    os.makedirs(folder)
    name = os.path.basename((file.filename or "").replace("\\", "/")).lstrip(".") or "upload.nii.gz"
    path = os.path.join(folder, name)
    written = 0
    try:
        with open(path, "wb") as f:
            while chunk := file.file.read(_CHUNK):
                f.write(chunk)
                written += len(chunk)
                if written % _CHECK_EVERY < len(chunk) and free_bytes(root) < min_free_bytes:
                    raise _refuse(root, written, min_free_bytes)
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
