"""Folders named by the environment: volumes the server may read in place (``AXONSEG_VOLUME_ROOTS``) and the
recipes' reference data (``AXONSEG_REFERENCE_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

# Beside a checkout: the shared data the shipped weights were trained and tested on.
_CHECKOUT_DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data"


def volume_roots() -> list[str]:
    """``AXONSEG_VOLUME_ROOTS``: ``os.pathsep``-separated folders (API and workers must see the same paths)."""
    return [r for r in os.environ.get("AXONSEG_VOLUME_ROOTS", "").split(os.pathsep) if r]


def reference_data_dir() -> str | None:
    """The folder holding the recipes' files (``lib.configs``): ``AXONSEG_REFERENCE_DATA``, else the shared
    data beside this checkout; None when neither exists. Fine-tuning replays its training data and checks
    its test split there."""
    folder = os.environ.get("AXONSEG_REFERENCE_DATA") or str(_CHECKOUT_DATA)
    return folder if os.path.isdir(folder) else None
