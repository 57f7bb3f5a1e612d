"""Axons in light-sheet / expansion microscopy (TRAILMAP-style sparse annotation)."""

from .spec import Augmentation, DataSource, Recipe, StructureSpec
from .task_config import StructureTaskConfig

_CUBES = "trailmap_cubes_training.h5"


def _cube(i: int) -> DataSource:
    # The file stacks ten independent 64^3 cubes along z; patches must not straddle two of them.
    return DataSource(
        _CUBES,
        "labels/sparse",
        region=((64 * i, 64 * i + 64), (None, None), (None, None)),
    )


SPEC = StructureSpec(
    name="axon",
    label_name="axon",
    modality="light-sheet",
    description="Axons in light-sheet or expansion microscopy (3D residual U-Net, isotropic)",
    # TRAILMAP: 0 unlabelled (ignored), 1 background, 2 axon, 3 artifact, 4 axon edge.
    label_map={1: 0, 2: 1, 3: 0, 4: 1},
    kernels=((3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
    filters=(8, 16, 32, 64),
    patch_size=(64, 64, 64),
    percentiles=(0.5, 99.9),
    structure_metrics=("skeleton",),
    # ExLLSM's hysteresis (seeds 0.98, grow 0.2, >= 1000 voxels) is available per request
    # (postprocessing=hysteresis) but scored below a plain threshold on the held-out TRAILMAP cubes with
    # these weights (F1 0.820 vs 0.846), so the threshold stays the default.
    recipe=Recipe(
        train=tuple(_cube(i) for i in range(8)),
        val=(_cube(8), _cube(9)),
        epochs=24,
        iterations_per_epoch=25,
        batch_size=2,
        learning_rate=3e-3,
        foreground_fraction=0.5,
        # D-LMBmap's three: match histograms to the unlabelled whole-brain chunk, paste artifact
        # cubes (label 3) as background, CLAHE.
        augmentation=Augmentation(
            histogram_reference="trailmap_example_chunk_unlabeled.h5",
            artifact_label=3,
            local_contrast=True,
        ),
    ),
)


class AxonConfig(StructureTaskConfig):
    spec = SPEC
