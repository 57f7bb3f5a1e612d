"""The 3D residual U-Net shared by all structures, and its weights files.

Weights files are ``torch.save`` dicts ``{"state_dict", "network", "meta"}`` so a file alone says
which network it belongs to; they are loaded with ``weights_only=True`` and written atomically.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from monai.networks.nets import DynUNet

_NORMS = {"instance": ("INSTANCE", {"affine": True}), "batch": ("BATCH", {"affine": True})}


def build_network(
    kernels,
    strides,
    filters,
    dropout: float = 0.0,
    norm: str = "instance",
    in_channels: int = 1,
    out_channels: int = 1,
):
    """A MONAI DynUNet with residual blocks; kernels/strides are per level and may be anisotropic.

    ``norm``: ``instance`` normalises every window by its own statistics, so a window of pure
    background is stretched until its noise looks like signal; ``batch`` keeps the training set's
    running statistics, so absolute (normalised) intensity still means something at inference.
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {', '.join(_NORMS)}, not {norm!r}")
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in kernels],
        strides=[list(s) for s in strides],
        upsample_kernel_size=[list(s) for s in strides[1:]],
        filters=list(filters),
        dropout=dropout or None,
        norm_name=_NORMS[norm],
        res_block=True,
    )


def save_checkpoint(path: str, checkpoint: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically: readers see the old file or the new one, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights(path: str, network: torch.nn.Module, network_args: dict, meta: dict[str, Any]) -> None:
    """Write a whole network's weights to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_checkpoint(path, {"state_dict": state, "network": network_args, "meta": meta})


def load_weights(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the network a weights file describes and load it; returns ``(network, meta)``."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    network = build_network(**checkpoint["network"])
    network.load_state_dict(checkpoint["state_dict"])
    return network.to(device).eval(), checkpoint.get("meta", {})
