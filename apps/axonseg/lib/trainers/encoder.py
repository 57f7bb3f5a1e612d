"""The U-Net encoder as a unit of weights: run it alone, save it, load it into a fresh U-Net, freeze it.

MONAI's ``DynUNet`` keeps its contracting path in three attributes (``input_block``, ``downsamples``,
``bottleneck``); everything else (``upsamples``, ``output_block``) is the decoder. An encoder file
holds only those parts, plus the network arguments, so a U-Net of another geometry refuses it
instead of loading half of it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.networks.nets import DynUNet

from ..errors import InvalidRequest
from ..networks import save_checkpoint

ENCODER_PARTS = ("input_block", "downsamples", "bottleneck")
# Network arguments an encoder depends on (dropout does not change the weights' shapes).
_GEOMETRY = ("kernels", "strides", "filters", "norm")


def as_unet(network: torch.nn.Module) -> DynUNet:
    """``network`` as the U-Net whose encoder these functions handle (a TypeError for any other network)."""
    if not isinstance(network, DynUNet):
        raise TypeError(f"only a MONAI DynUNet has this encoder, not a {type(network).__name__}")
    return network


def encoder_modules(network: DynUNet) -> dict[str, torch.nn.Module]:
    return {part: getattr(network, part) for part in ENCODER_PARTS}


def encode(network: DynUNet, image: torch.Tensor) -> torch.Tensor:
    """The bottleneck features of ``image`` (the contracting path only, no skips or decoder)."""
    x = network.input_block(image)
    for down in network.downsamples:
        x = down(x)
    return network.bottleneck(x)


def encoder_parameters(network: DynUNet) -> list[torch.nn.Parameter]:
    return [p for module in encoder_modules(network).values() for p in module.parameters()]


def set_encoder_trainable(network: DynUNet, trainable: bool) -> None:
    """Freeze (False) or unfreeze the encoder; frozen parameters get no gradient, so the optimiser skips them."""
    for parameter in encoder_parameters(network):
        parameter.requires_grad_(trainable)


def save_encoder(path: str, network: DynUNet, network_args: dict, meta: dict[str, Any]) -> None:
    """Write the encoder's weights to ``path`` atomically (readers never see half a file)."""
    state = {
        part: {k: v.detach().cpu() for k, v in module.state_dict().items()}
        for part, module in encoder_modules(network).items()
    }
    save_checkpoint(path, {"encoder": state, "network": network_args, "meta": meta})


def read_encoder(path: str, network_args: dict) -> dict[str, Any]:
    """The encoder file's checkpoint, checked against the U-Net it is meant for.

    Raises:
        InvalidRequest: the file is missing, is not an encoder file, or was pretrained for a U-Net of
            another geometry.
    """
    if not os.path.isfile(path):
        raise InvalidRequest(f"pretrained encoder {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise InvalidRequest(f"{path} is not a weights file: {e}") from None
    if not isinstance(checkpoint, dict) or "encoder" not in checkpoint:
        raise InvalidRequest(f"{path} holds no encoder weights (is it a whole model's file?)")
    # Files written before the norm became a choice were instance-normed.
    theirs = {k: checkpoint.get("network", {}).get(k, "instance" if k == "norm" else None) for k in _GEOMETRY}
    ours = {k: network_args.get(k, "instance" if k == "norm" else None) for k in _GEOMETRY}
    if theirs != ours:
        raise InvalidRequest(
            f"the encoder in {path} was pretrained for a U-Net with {theirs}, not this model's {ours}; "
            "pretrain one for this structure (ssl_pretrain with structure=<model>)"
        )
    return checkpoint


def load_encoder(network: DynUNet, path: str, network_args: dict) -> dict[str, Any]:
    """Load a pretrained encoder into ``network`` (its decoder is left as it is); returns the file's meta."""
    checkpoint = read_encoder(path, network_args)
    for part, module in encoder_modules(network).items():
        module.load_state_dict(checkpoint["encoder"][part])
    return checkpoint.get("meta", {})
