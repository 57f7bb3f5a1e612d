"""Neuromuscular-junction and neuron membranes in anisotropic ssTEM (Drosophila VNC + ISBI 2012)."""

from .spec import Augmentation, DataSource, Recipe, StructureSpec
from .task_config import StructureTaskConfig

_VNC = "drosophila_vnc_stack1_xlt512.h5"
_ISBI = "isbi2012_sstem.h5"

SPEC = StructureSpec(
    name="membrane",
    label_name="membrane",
    modality="electron microscopy (ssTEM)",
    description="Cell membranes in anisotropic ssTEM (3D residual U-Net, 2D kernels at full resolution)",
    label_map={0: 0, 1: 1},
    kernels=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)),
    strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)),
    filters=(8, 16, 32, 64),
    patch_size=(8, 160, 160),
    # seed 003: bilateral filter, erosion, dilation (held-out F1 0.754 / 0.725 vs 0.754 / 0.724 plain threshold)
    postprocessing="bilateral",
    postprocessing_options={"radius": 1},
    recipe=Recipe(
        # Hold out y >= 768 of the VNC half and y >= 384 of ISBI 2012 (full depth each).
        train=(
            DataSource(_VNC, "labels/membrane", region=((None, None), (0, 768), (None, None))),
            DataSource(
                _ISBI,
                "labels/membrane_isbi",
                region=((None, None), (0, 384), (None, None)),
            ),
        ),
        val=(
            DataSource(
                _VNC,
                "labels/membrane",
                region=((None, None), (768, 1024), (None, None)),
            ),
            DataSource(
                _ISBI,
                "labels/membrane_isbi",
                region=((None, None), (384, 512), (None, None)),
            ),
        ),
        epochs=20,
        iterations_per_epoch=30,
        batch_size=2,
        learning_rate=3e-3,
        foreground_fraction=0.3,
        # ssTEM: in-plane warps only, plus missing and misaligned sections.
        augmentation=Augmentation(section_defects=True),
    ),
)


class MembraneConfig(StructureTaskConfig):
    spec = SPEC
