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
from ..transforms.intensity import normalize_percentiles
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

    @property
    def labelled_voxels(self) -> int:
        return int(self.mask.sum())


def _crop(array: np.ndarray, region) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in region)]


def read_source(data_dir: str, source: DataSource, spec: StructureSpec) -> tuple[np.ndarray, np.ndarray]:
    """A recipe :class:`DataSource`'s normalised image and raw label values, cropped to its region.

    The file's volume is the image: it is normalised by its own statistics, then cropped, as any
    region of a datastore image is normalised by its image's.
    """
    path = os.path.join(data_dir, source.file)
    raw = read_volume(path, source.raw).array
    label = read_volume(path, source.label).array
    image = normalize_percentiles(raw, spec.percentiles, spec.intensity_ceiling)
    return _crop(image, source.region), _crop(label, source.region)


def load_source(data_dir: str, source: DataSource, spec: StructureSpec) -> TrainingVolume:
    """Load a recipe :class:`DataSource` (HDF5 raw + label datasets, cropped to its region)."""
    image, label = read_source(data_dir, source, spec)
    target, mask = map_labels(label, spec.label_map)
    return TrainingVolume(f"{source.file}:{source.label}{list(source.region)}", image, target, mask)


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
    """Per-volume sampling weights: ``share`` of patches from ``replay``, the rest from ``train``, each
    set by labelled voxels within."""
    if not replay:
        return [float(v.labelled_voxels) for v in train]
    new, old = sum(v.labelled_voxels for v in train), sum(v.labelled_voxels for v in replay)
    return [(1 - share) * v.labelled_voxels / new for v in train] + [share * v.labelled_voxels / old for v in replay]
