"""Whole-volume prediction (no MONAI Label objects): a :class:`Predictor` per image, used by infer, scoring and
training alike."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..configs.spec import StructureSpec
from ..params import one_of
from ..transforms.intensity import IntensityStats, intensity_stats, normalize
from ..transforms.io import Volume
from .postprocessing import ON_IMAGE_GRID, postprocess

# Test-time variants the code builds: none, the 8 combinations of z/y/x flips, those with and without rot90.
TTA_VARIANTS = (1, 8, 16)
# Images within this relative difference of the model's voxel size are predicted as they are.
RESAMPLE_TOLERANCE = 0.25
# The voxel size readers report when a file states none (1 µm); it is never resampled from.
UNKNOWN_VOXEL_SIZE_NM = (1000.0, 1000.0, 1000.0)
# Called before every forward pass of sliding-window inference (None: nothing). A worker sets a check that
# raises once its job is cancelled, so the job stops within one pass, not after the tens of passes of a
# region (MC dropout, test-time variants, validation).
_BEFORE_FORWARD: ContextVar[Callable[[], None] | None] = ContextVar("before_forward", default=None)


@contextmanager
def before_each_forward(check: Callable[[], None]) -> Iterator[None]:
    """Call ``check`` before every forward pass of :func:`sliding_window_probabilities` inside the block."""
    token = _BEFORE_FORWARD.set(check)
    try:
        yield
    finally:
        _BEFORE_FORWARD.reset(token)


def check_tta(value: Any) -> int:
    """A request's ``tta``: one of :data:`TTA_VARIANTS` (InvalidRequest otherwise)."""
    return one_of("tta", value, TTA_VARIANTS, " (test-time variants: none, 8 flips, 8 flips x 2 rotations)")


def resampling_zoom(spec: StructureSpec, voxel_size_nm: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Per-axis factor that brings an image of ``voxel_size_nm`` onto the model's voxel grid, or None
    when either voxel size is unknown or they agree within ``RESAMPLE_TOLERANCE`` (in-plane only for a
    planar model)."""
    if spec.voxel_size_nm is None or voxel_size_nm is None:
        return None
    if tuple(float(v) for v in voxel_size_nm) == UNKNOWN_VOXEL_SIZE_NM:
        return None
    zoom = tuple(float(v) / float(m) for v, m in zip(voxel_size_nm, spec.voxel_size_nm))
    if spec.planar:  # sections are predicted one by one, whatever their thickness
        zoom = (1.0, *zoom[1:])
    if all(abs(z - 1.0) <= RESAMPLE_TOLERANCE for z in zoom):
        return None
    return zoom


def voxel_size_nm(volume: Volume, override: tuple[float, ...] | None = None) -> tuple[float, ...] | None:
    """A read volume's (z, y, x) voxel size in nm: ``override`` (a recipe's, or the user's), else the
    file's, else None (readers report 1 µm when a file states none)."""
    if override is not None:
        return tuple(override)
    spacing = tuple(volume.spacing)
    return None if spacing == (1.0, 1.0, 1.0) else tuple(1000.0 * s for s in spacing)


def resize(array: np.ndarray, shape: tuple[int, ...], mode: str = "trilinear") -> np.ndarray:
    """``array`` resampled onto ``shape`` (float32; ``mode`` as in ``torch.nn.functional.interpolate``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    corners = {"align_corners": False} if mode == "trilinear" else {}
    return torch.nn.functional.interpolate(tensor, size=tuple(shape), mode=mode, **corners)[0, 0].numpy()


def model_grid_shape(shape: tuple[int, ...], spec: StructureSpec, voxel_size_nm: tuple[float, ...] | None):
    """The shape a volume of ``shape`` and ``voxel_size_nm`` has on the model's voxel grid."""
    zoom = resampling_zoom(spec, voxel_size_nm)
    return tuple(shape) if zoom is None else tuple(max(1, round(s * z)) for s, z in zip(shape, zoom))


def model_grid_image(
    array: np.ndarray,
    spec: StructureSpec,
    stats: IntensityStats | None = None,
    voxel_size_nm: tuple[float, ...] | None = None,
) -> np.ndarray:
    """A raw volume normalised (by ``stats``, its image's; None: its own) and resampled (trilinear) onto
    the model's voxel grid: what the network sees, in inference, scoring and training alike."""
    image = normalize(array, stats or intensity_stats(array), spec.percentiles, spec.intensity_ceiling)
    shape = model_grid_shape(image.shape, spec, voxel_size_nm)
    return image if shape == image.shape else resize(image, shape)


def model_grid_label(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label (or mask) resampled by nearest neighbour onto ``shape`` (from :func:`model_grid_shape`)."""
    if tuple(label.shape) == tuple(shape):
        return label
    resized = resize(label.astype(np.float32), shape, mode="nearest-exact")
    return resized.round().astype(label.dtype)


@dataclass(frozen=True)
class Predictor:
    """A network that predicts raw (z, y, x) volumes of one image: what inference, scoring, test-time
    augmentation and encoder features share.

    ``stats``: the intensity statistics of the image the volumes are cut from (datastore regions); None
    means each volume is a whole image, normalised by its own. ``voxel_size_nm``: the image's (z, y, x)
    voxel size; an image far from the model's (:func:`resampling_zoom`) is resampled (trilinear) onto the
    model's grid and predicted there, e.g. 50 nm ssTEM sections for a 5 nm isotropic FIB-SEM model.
    """

    network: torch.nn.Module
    spec: StructureSpec
    device: str | torch.device = "cpu"
    stats: IntensityStats | None = None
    voxel_size_nm: tuple[float, ...] | None = None

    def grid_image(self, array: np.ndarray) -> np.ndarray:
        """``array`` as the network sees it (:func:`model_grid_image`)."""
        return model_grid_image(array, self.spec, self.stats, self.voxel_size_nm)

    def window_probabilities(self, image: np.ndarray, eval_mode: bool = True) -> np.ndarray:
        """:func:`sliding_window_probabilities` of an image already on the model's grid."""
        return sliding_window_probabilities(self.network, image, self.spec, self.device, eval_mode=eval_mode)

    def probabilities(self, array: np.ndarray, tta: int = 1) -> np.ndarray:
        """Foreground probability for every voxel of ``array``, as float32, on its grid.

        ``tta``: 1 (none), 8 (every combination of z, y and x flips) or 16 (the 8 flips, with and
        without an in-plane 90° rotation); the inverse-transformed probabilities are averaged.
        """
        probabilities = self.grid_probabilities(array, tta)
        return probabilities if probabilities.shape == array.shape else resize(probabilities, array.shape)

    def grid_probabilities(self, array: np.ndarray, tta: int = 1) -> np.ndarray:
        """:meth:`probabilities` left on the model's voxel grid (the image's when not resampled)."""
        image = self.grid_image(array)
        if tta == 1:
            return self.window_probabilities(image)
        probabilities = np.zeros(image.shape, dtype=np.float32)
        for variant in self.tta_variants(image, tta):
            probabilities += variant
        return probabilities / tta

    def tta_variants(self, image: np.ndarray, tta: int = 8) -> Iterator[np.ndarray]:
        """Each test-time variant's probabilities for an image on the model's grid, mapped back onto it."""
        if tta not in TTA_VARIANTS:
            raise ValueError(f"tta must be one of {TTA_VARIANTS}, not {tta}")
        for rotate in (False, True)[: max(tta // 8, 1)]:
            for flips in itertools.product((False, True), repeat=3 if tta > 1 else 0):
                axes = tuple(axis for axis, flip in enumerate(flips) if flip)
                variant = np.flip(image, axes) if axes else image
                if rotate:
                    variant = np.rot90(variant, 1, axes=(1, 2))
                probabilities = self.window_probabilities(variant)
                if rotate:
                    probabilities = np.rot90(probabilities, -1, axes=(1, 2))
                yield np.ascontiguousarray(np.flip(probabilities, axes) if axes else probabilities)

    def predict(
        self,
        array: np.ndarray,
        tta: int = 1,
        postprocessing: str | None = None,
        anchors: np.ndarray | None = None,
        **options: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and label of a raw volume, both on its grid (``postprocessing``, ``anchors`` (on
        ``array``'s grid) and ``options`` as in ``lib.infers.postprocessing.postprocess``).

        Post-processing runs on the model's voxel grid, so sizes and distances (``min_size``,
        ``min_distance``) mean the same whatever the image's voxel size; the label comes back by nearest
        neighbour. Methods of ``ON_IMAGE_GRID`` (``trace``) run on the image's grid at its voxel size.
        """
        spec = self.spec
        probabilities = self.grid_probabilities(array, tta)
        if (postprocessing or spec.postprocessing) in ON_IMAGE_GRID:
            if probabilities.shape != array.shape:
                probabilities = resize(probabilities, array.shape)
            label = postprocess(
                probabilities, spec, postprocessing, voxel_size_nm=self.voxel_size_nm, anchors=anchors, **options
            )
            return probabilities, label
        label = postprocess(probabilities, spec, postprocessing, anchors=anchors, **options)
        if probabilities.shape != array.shape:
            probabilities = resize(probabilities, array.shape)
            label = model_grid_label(label, array.shape)
        return probabilities, label

    def segment(
        self,
        array: np.ndarray,
        tta: int = 1,
        postprocessing: str | None = None,
        inner: tuple[slice, slice, slice] | None = None,
        anchors: np.ndarray | None = None,
        **options: Any,
    ) -> np.ndarray:
        """Label volume for a raw (z, y, x) volume (:meth:`predict`): the spec's post-processing, or
        ``postprocessing`` with ``options`` overriding its defaults. ``inner``: the part of ``array`` to
        return (a region inside its context); post-processing sees the whole context, so objects crossing
        the region's border keep their size. ``anchors``: on the returned part's grid (the region's)."""
        if anchors is not None and inner is not None:
            placed = np.zeros(array.shape, anchors.dtype)
            placed[inner] = anchors
            anchors = placed
        _, label = self.predict(array, tta, postprocessing, anchors, **options)
        return np.ascontiguousarray(label[inner]) if inner is not None else label


@torch.no_grad()
def sliding_window_probabilities(
    network: torch.nn.Module,
    image: np.ndarray,
    spec: StructureSpec,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 2,
    eval_mode: bool = True,
) -> np.ndarray:
    """Probabilities for an already-normalised float32 volume (``eval_mode=False`` keeps the network's
    layer modes, for Monte-Carlo dropout).

    Uses Gaussian-weighted sliding windows of ``spec.patch_size`` with ``spec.overlap``; volumes
    smaller than a window are padded by MONAI and cropped back. Padding replicates the edge: zero
    padding shifts the networks' instance-norm statistics so far that a synapse crop 128 voxels high
    (window 160) came back empty (F1 0.0 vs 0.73 with replicate padding).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    if eval_mode:
        network.eval()
    check = _BEFORE_FORWARD.get()
    logits = sliding_window_inference(
        tensor,
        roi_size=spec.patch_size,
        sw_batch_size=sw_batch_size,
        predictor=network if check is None else _checked(network, check),
        overlap=spec.overlap,
        mode="gaussian",
        padding_mode="replicate",
    )
    if not isinstance(logits, torch.Tensor):  # MONAI passes a network's tuple or dict outputs through
        raise TypeError(f"the network returned {type(logits).__name__}, not one tensor of logits")
    return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def _checked(network: torch.nn.Module, check: Callable[[], None]) -> Callable[[torch.Tensor], torch.Tensor]:
    def predictor(windows: torch.Tensor) -> torch.Tensor:
        check()
        return network(windows)

    return predictor
