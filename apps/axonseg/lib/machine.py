"""A one-line description of the machine, for model cards and benchmark reports."""

from __future__ import annotations

import os
import platform


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
