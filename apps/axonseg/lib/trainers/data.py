"""Training volumes and random patch sampling.

A :class:`TrainingVolume` holds a normalised image, a binary target and a loss mask. Patches are
drawn either uniformly or centred on a foreground voxel, then augmented by the recipe's transforms
(``lib.trainers.augmentation``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from monai.transforms import Compose
from monai.utils import convert_to_numpy

from ..configs.spec import DataSource, StructureSpec
from ..infers.predict import model_grid_image, model_grid_label, voxel_size_nm
from ..transforms.augment import PATCH_KEYS
from ..transforms.intensity import intensity_stats
from ..transforms.io import read_volume
from ..transforms.labels import map_labels

if TYPE_CHECKING:
    from ..datastore import MicroscopyDatastore


@dataclass
class TrainingVolume:
    name: str
    image: np.ndarray  # float32, normalised to [0, 1]
    target: np.ndarray  # uint8 0/1
    mask: np.ndarray  # bool, voxels the loss sees
    microscope: str = ""  # patches are shared equally between microscopes (``mixing_weights``)

    @property
    def labelled_voxels(self) -> int:
        return int(self.mask.sum())


def read_source(data_dir: str, source: DataSource, spec: StructureSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A recipe :class:`DataSource` on the model's voxel grid: normalised image, raw label values and the
    voxels its ``mask`` covers (all of them without one).

    The file's volume is the image: it is normalised by its own statistics, then cropped and resampled
    onto the model's grid (:func:`lib.infers.predict.model_grid_image`; labels by nearest neighbour), as
    any region of a datastore image is when it is predicted or trained on.
    """
    path = os.path.join(data_dir, source.file)
    volume = read_volume(path, source.raw)
    crop = tuple(slice(a, b) for a, b in source.region)
    size = voxel_size_nm(volume, source.voxel_size_nm)
    image = model_grid_image(volume.array[crop], spec, intensity_stats(volume.array), size)
    label = model_grid_label(read_volume(path, source.label).array[crop], image.shape)
    if source.mask is None:
        return image, label, np.ones(image.shape, dtype=bool)
    covered = (read_volume(path, source.mask).array[crop] > 0).astype(np.uint8)
    return image, label, model_grid_label(covered, image.shape) > 0


def load_source(data_dir: str, source: DataSource, spec: StructureSpec) -> TrainingVolume:
    """Load a recipe :class:`DataSource` (HDF5 raw + label datasets, cropped to its region, on the model's
    grid); the loss sees the voxels the label map and the source's mask both allow."""
    image, label, covered = read_source(data_dir, source, spec)
    target, mask = map_labels(label, spec.label_map)
    name = f"{source.file}:{source.label}{list(source.region)}"
    return TrainingVolume(name, image, target, mask & covered, source.microscope)


def load_region(datastore: MicroscopyDatastore, region_id: str, spec: StructureSpec) -> TrainingVolume:
    """A datastore region with its latest final label of ``spec``'s structure (any value > 0 is foreground:
    binary labels and object ids alike), normalised by its image's statistics and resampled onto the
    model's voxel grid (e.g. 50 nm ssTEM sections for a 5 nm isotropic FIB-SEM model), as inference sees it."""
    data = datastore.read_region(region_id)
    label = datastore.read_label(region_id, spec.name)
    if label is None:
        raise ValueError(f"'{region_id}' has no final {spec.name} label")
    image = model_grid_image(data.array, spec, data.stats, voxel_size_nm(data.region_volume))
    # Annotators label the whole region they submit, so every voxel counts.
    return TrainingVolume(
        region_id,
        image,
        model_grid_label((label > 0).astype(np.uint8), image.shape),
        np.ones(image.shape, dtype=bool),
    )


class PatchSampler:
    """Random training patches of a fixed size from a list of volumes, augmented by ``transforms``.

    A volume is picked with probability proportional to its labelled voxels, or to ``weights`` (one
    per volume) when given: how fine-tuning mixes a lab's new regions with replayed training data.
    """

    def __init__(
        self,
        volumes: list[TrainingVolume],
        patch_size,
        foreground_fraction: float,
        seed: int,
        transforms: Compose,
        weights: list[float] | None = None,
    ):
        kept = [(v, w) for v, w in zip(volumes, weights or [v.labelled_voxels for v in volumes]) if v.labelled_voxels]
        self.volumes = [v for v, _ in kept]
        if not self.volumes:
            raise ValueError("no labelled voxels in the training data")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = foreground_fraction
        self.rng = np.random.default_rng(seed)
        self.transforms = transforms.set_random_state(seed)
        # Flat indices of labelled foreground voxels per volume, for foreground-centred sampling;
        # labelled voxels are listed only for sparse masks (dense ones sample uniformly).
        self._foreground = [np.flatnonzero((v.target > 0) & v.mask) for v in self.volumes]
        self._labelled = [None if v.mask.all() else np.flatnonzero(v.mask) for v in self.volumes]
        chances = np.array([w for _, w in kept], dtype=float)
        self._volume_p = chances / chances.sum()

    def _corner(self, shape, centre) -> tuple[int, ...]:
        return tuple(int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, self.patch_size, shape))

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented ``(image, target, mask)`` patch, each ``(1, *patch_size)`` (zero-padded)."""
        i = int(self.rng.choice(len(self.volumes), p=self._volume_p))
        volume = self.volumes[i]
        use_fg = len(self._foreground[i]) and self.rng.random() < self.foreground_fraction
        # Centre on a labelled voxel so sparse annotations (a few z-slices) are always in view.
        pool = self._foreground[i] if use_fg else self._labelled[i]
        if pool is None:
            centre = tuple(int(self.rng.integers(s)) for s in volume.image.shape)
        else:
            flat = int(pool[self.rng.integers(len(pool))])
            centre = tuple(int(c) for c in np.unravel_index(flat, volume.image.shape))
        corner = self._corner(volume.image.shape, centre)
        region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        arrays = [volume.image[region], volume.target[region], volume.mask[region]]
        pad = [(0, p - s) for p, s in zip(self.patch_size, arrays[0].shape)]
        if any(after for _, after in pad):
            arrays = [np.pad(a, pad) for a in arrays]  # padded voxels are masked out (mask pads with 0)
        image, target, mask = (a.astype(np.float32) for a in arrays)  # warps resample every key
        out = self.transforms({"image": image, "target": target, "mask": mask})
        image, target, mask = (convert_to_numpy(out[k]) for k in PATCH_KEYS)
        return np.ascontiguousarray(image, dtype=np.float32), (target > 0.5).astype(np.uint8), mask > 0.5

    def batch(self, size: int):
        patches = [self.sample() for _ in range(size)]
        return tuple(np.stack([p[j] for p in patches]) for j in range(3))


def mixing_weights(train: list[TrainingVolume], replay: list[TrainingVolume], share: float) -> list[float]:
    """Per-volume sampling weights: ``share`` of patches from ``replay``, the rest from ``train``. Within each
    set every microscope gets an equal share, and its volumes divide it by labelled voxels, so Lucchi++'s 165
    sections do not drown HeLa's five."""
    if not replay:
        return _balanced(train)
    return [(1 - share) * w for w in _balanced(train)] + [share * w for w in _balanced(replay)]


def _balanced(volumes: list[TrainingVolume]) -> list[float]:
    """Weights summing to 1: equal per microscope, by labelled voxels within one."""
    totals: dict[str, int] = {}
    for v in volumes:
        totals[v.microscope] = totals.get(v.microscope, 0) + v.labelled_voxels
    return [v.labelled_voxels / totals[v.microscope] / len(totals) if totals[v.microscope] else 0.0 for v in volumes]
