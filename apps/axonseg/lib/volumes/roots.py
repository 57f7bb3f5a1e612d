"""Folders the server may read volumes from in place (``AXONSEG_VOLUME_ROOTS``)."""

from __future__ import annotations

import os


def volume_roots() -> list[str]:
    """``AXONSEG_VOLUME_ROOTS``: ``os.pathsep``-separated folders (API and workers must see the same paths)."""
    return [r for r in os.environ.get("AXONSEG_VOLUME_ROOTS", "").split(os.pathsep) if r]
