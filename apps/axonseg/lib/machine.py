"""The machine the code runs on: the default torch device, and a one-line description for reports."""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from .errors import InvalidRequest
from .params import shown

_DEVICE = re.compile(r"cpu|cuda(:\d{1,2})?")


def check_device(value: Any) -> str:
    """A request's ``device``: ``auto`` (also for None or empty), ``cpu``, ``cuda`` or ``cuda:N``.

    Whether the worker has that GPU is only known there (it answers 400 when it has none)."""
    if value in (None, "", "auto"):
        return "auto"
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise InvalidRequest(f"device must be auto, cpu, cuda or cuda:N, not {shown(value)}")
    return value


def default_device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_machine(device: str = "cpu") -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
