"""What a structure model is: network geometry, label mapping, patching, post-processing, recipe.

A :class:`StructureSpec` is plain data. Infer, train and the model card all read it, so a model
is described in exactly one place (one module per structure in this package).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class DataSource:
    """A labelled volume in an HDF5 file, cropped to a region (z, y, x slices as [start, stop)).

    ``voxel_size_nm``: (z, y, x), for files that do not state theirs (training and evaluation resample by
    it). ``microscope``: the instrument and preparation the volume comes from; leave-one-microscope-out
    runs hold out every source of one. ``mask``: a dataset of the file marking the voxels the label
    covers (HeLa's labelled central cell); outside it nothing is trained on or scored.
    """

    file: str
    label: str
    raw: str = "raw"
    region: tuple[tuple[int | None, int | None], ...] = (
        (None, None),
        (None, None),
        (None, None),
    )
    voxel_size_nm: tuple[float, float, float] | None = None
    microscope: str = ""
    mask: str | None = None


def slabs(
    file: str,
    label: str,
    microscope: str,
    axis: int,
    cuts: tuple[int, int, int, int],
    mask: str | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
) -> tuple[DataSource, DataSource, DataSource]:
    """Train, select and test slabs of one labelled volume along ``axis`` (0 z, 1 y, 2 x), cut at ``cuts``
    (start, select, test, stop): each microscope of a recipe split on its own."""

    def slab(a: int, b: int) -> DataSource:
        region = tuple((a, b) if i == axis else (None, None) for i in range(3))
        return DataSource(file, label, region=region, voxel_size_nm=voxel_size_nm, microscope=microscope, mask=mask)

    return slab(cuts[0], cuts[1]), slab(cuts[1], cuts[2]), slab(cuts[2], cuts[3])


# The planar U-Net of the EM models: five levels, in-plane kernels and pooling only (``StructureSpec.planar``).
PLANAR_KERNELS = ((1, 3, 3),) * 5
PLANAR_STRIDES = ((1, 1, 1),) + ((1, 2, 2),) * 4
PLANAR_FILTERS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Augmentation:
    """Which training augmentations a recipe uses; ``lib.trainers.augmentation`` builds them.

    Flips and in-plane 90° rotations always apply (z flips only for isotropic data). Spatial
    deformation follows the data's anisotropy: 3D elastic for isotropic volumes, an in-plane
    affine (rotation, scale) for ssTEM, whose 50 nm sections must not be mixed.
    """

    intensity: bool = True  # gamma, contrast, brightness, Gaussian noise
    # Many microscopes: blur, lower resolution, inverted contrast, histogram shifts and stronger gamma, so the
    # network cannot lean on one instrument's contrast or sharpness.
    domain_randomisation: bool = False
    deform: float = 0.2  # probability of an elastic (isotropic) / in-plane affine (anisotropic) warp
    section_defects: bool = False  # EM: missing sections and misaligned section stacks
    # D-LMBmap (light-sheet): histogram matching to a reference volume, cutmix with artifact cubes
    # (voxels of raw label ``artifact_label``), CLAHE local contrast.
    histogram_reference: str | None = None  # an HDF5 file in the data folder (its ``raw`` volume)
    artifact_label: int | None = None
    local_contrast: bool = False


@dataclass(frozen=True)
class ForegroundCheck:
    """A dense sanity check on a volume without labels of the structure: the share of its voxels the
    model marks must fall in ``plausible`` (fractions), for the reason given in ``why``."""

    file: str
    dataset: str
    plausible: tuple[float, float]
    why: str
    region: tuple[tuple[int | None, int | None], ...] = ((None, None), (None, None), (None, None))


@dataclass(frozen=True)
class FineTune:
    """How served weights adapt to a lab's few labelled regions (``lib.trainers.finetune``), and the gate
    that decides whether the result is served.

    Iterations scale with the labelled voxels on the model's grid: ``iterations_per_patch`` per
    patch-worth of them, within ``[min_iterations, max_iterations]``. Held out for the gate: every
    ``1 / hold_out_share``-th whole region once there are ``hold_out_regions_from`` regions, before
    that the last ``hold_out_share`` of each region along its longest axis. A patch in ``replay_share``
    comes from the recipe's own training data (``replay_voxels`` of each source), so the original
    microscope is not forgotten. Published only if the held-out score rises and the recipe's test split
    stays within ``original_tolerance`` (voxel F1) of the served weights'.
    """

    iterations_per_patch: float = 8.0
    min_iterations: int = 40
    max_iterations: int = 600
    learning_rate_factor: float = 0.1  # of the recipe's learning rate
    validations: int = 4  # times the held-out part is scored during a run (the best is kept)
    replay_share: float = 0.25
    replay_voxels: int = 4_000_000
    hold_out_regions_from: int = 3
    hold_out_share: float = 0.25
    # The fewest labelled voxels (model grid) a run starts with, so the held-out share is not a handful of
    # voxels: 20,000 is under a tenth of one dense 64x256x256 region, and holds out 5,000.
    min_labelled_voxels: int = 20_000
    original_tolerance: float = 0.02


@dataclass(frozen=True)
class Recipe:
    """How the shipped weights were trained and are judged (``lib.protocol``); files are relative to the
    data folder.

    Three disjoint splits: ``train`` teaches; ``select`` chooses the epoch, and any threshold or
    post-processing step, by hand or by sweep; ``test`` only reports. ``cross`` are labelled volumes of
    other microscopes or animals (also report-only), ``unlabelled`` dense foreground-fraction checks.
    """

    train: tuple[DataSource, ...]
    select: tuple[DataSource, ...]
    test: tuple[DataSource, ...]
    cross: tuple[DataSource, ...] = ()
    unlabelled: tuple[ForegroundCheck, ...] = ()
    epochs: int = 20
    iterations_per_epoch: int = 40
    val_every: int = 4  # epochs between validations on ``select`` (the best epoch is kept)
    batch_size: int = 2
    learning_rate: float = 2e-3
    foreground_fraction: float = 0.5  # share of patches centred on a foreground voxel
    loss: str = "bce_dice"  # a name in lib.trainers.losses.LOSSES
    pos_weight: float = 1.0  # > 1 weights foreground errors up (rare structures)
    augmentation: Augmentation = Augmentation()
    fine_tune: FineTune = FineTune()
    seed: int = 0

    @property
    def microscopes(self) -> tuple[str, ...]:
        """The microscopes of the training sources, in recipe order."""
        return tuple(dict.fromkeys(s.microscope for s in self.train if s.microscope))

    def leave_out(self, microscope: str) -> Recipe:
        """The recipe trained and selected without ``microscope``, and tested on that microscope's test
        sources only: how a lab's new instrument sees the model (``cross`` and dense checks dropped)."""
        if microscope not in self.microscopes:
            raise ValueError(f"no training source is from microscope {microscope!r}; known: {list(self.microscopes)}")

        def others(sources: tuple[DataSource, ...]) -> tuple[DataSource, ...]:
            return tuple(s for s in sources if s.microscope != microscope)

        if not others(self.train) or not others(self.select):
            raise ValueError(f"without {microscope!r} nothing is left to train or select on")
        held_out = tuple(s for s in self.test if s.microscope == microscope)
        return replace(self, train=others(self.train), select=others(self.select), test=held_out, cross=(),
                       unlabelled=())  # fmt: skip


@dataclass(frozen=True)
class StructureSpec:
    """Everything that differs between the four structures.

    Attributes:
        name: model and trainer name served over the API.
        label_name: the single foreground class; the served label value is 1.
        modality: imaging modality the model was trained on.
        label_map: raw label value → training target (1 foreground, 0 background); values not in
            the map are ignored by the loss (sparse annotation, e.g. TRAILMAP's 0 = unlabelled).
        kernels / strides: per U-Net level, (z, y, x); anisotropic for ssTEM.
        filters: channels per level.
        patch_size: training patch and sliding-window ROI, (z, y, x).
        threshold: probability above which a voxel is foreground.
        min_size: connected components smaller than this (voxels) are removed.
        postprocessing: how probabilities become a label (``lib.infers.postprocessing`` method name);
        postprocessing_options: that method's options beyond ``threshold``/``min_size``.
        structure_metrics: metrics beyond the voxel ones that suit the structure (``skeleton`` for
            thin tubes, ``instances`` for separate objects, ``detection`` for small sparse objects).
        percentiles / intensity_ceiling: the image percentiles mapped to 0 and 1, and the value the
            normalised intensities are clipped to (``lib.transforms.intensity.normalize``).
        norm: the network's normalisation layers, ``instance`` or ``batch`` (``lib.networks``).
        voxel_size_nm: the (z, y, x) voxel size the model was trained at; ``lib.infers.predict``
            resamples images whose voxel size differs by more than ``RESAMPLE_TOLERANCE``.
    """

    name: str
    label_name: str
    modality: str
    description: str
    label_map: dict[int, int]
    kernels: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    filters: tuple[int, ...]
    patch_size: tuple[int, int, int]
    recipe: Recipe
    threshold: float = 0.5
    min_size: int = 0
    percentiles: tuple[float, float] = (0.5, 99.5)
    intensity_ceiling: float = 1.0
    norm: str = "instance"
    voxel_size_nm: tuple[float, float, float] | None = None
    overlap: float = 0.25
    dropout: float = 0.0
    postprocessing: str = "threshold"
    postprocessing_options: dict[str, Any] = field(default_factory=dict)
    structure_metrics: tuple[str, ...] = ()

    @property
    def modality_group(self) -> str:
        """``em`` or ``light-sheet``: images of that group may carry this structure's labels."""
        return "em" if "electron" in self.modality.lower() else "light-sheet"

    @property
    def anisotropic(self) -> bool:
        """ssTEM-like data: the first level convolves in-plane only because z is much coarser."""
        return self.kernels[0][0] == 1

    @property
    def planar(self) -> bool:
        """A 2D network run section by section (no level convolves or pools across z): images are
        resampled in-plane only, so 5 nm FIB-SEM and 50 nm ssTEM sections are the same problem, and
        ``voxel_size_nm``'s z is nominal."""
        return all(k[0] == 1 for k in self.kernels) and all(s[0] == 1 for s in self.strides)

    @property
    def labels(self) -> dict[str, int]:
        return {self.label_name: 1}

    def network_args(self) -> dict:
        return {
            "kernels": [list(k) for k in self.kernels],
            "strides": [list(s) for s in self.strides],
            "filters": list(self.filters),
            "dropout": self.dropout,
            "norm": self.norm,
        }
