"""Microscopy-specific training augmentations as MONAI-style pairs: an array transform on (z, y, x) numpy
volumes and a dictionary transform (``...d``) for ``{"image", "target", "mask"}`` patches.

Standard augmentations (flips, rot90, gamma, contrast, noise, elastic) are MONAI's own; these add what
MONAI lacks:

- EM section defects: :class:`RandMissingSection` (a blank slice) and :class:`RandMisalignment`
  (every slice from some z on shifted in-plane, image and labels together);
- the three D-LMBmap augmentations: :class:`HistogramMatch` to a reference volume,
  :class:`RandArtifactCutMix` (paste an artifact cube, e.g. TRAILMAP label 3, as labelled background),
  :class:`RandLocalContrast` (CLAHE);
- domain randomisation across EM microscopes: :class:`RandInvert` (contrast polarity),
  :class:`RandInPlaneBlur` and :class:`RandInPlaneLowResolution` (a softer or coarser pixel, sections kept apart).

``lib.trainers.augmentation`` composes them with MONAI's into each structure's recipe.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

PATCH_KEYS = ("image", "target", "mask")


class _ArrayDraw(Protocol):
    """An array transform whose draw is made apart from its application (``randomize(shape)``, then
    ``__call__(array, randomize=False)``), so one draw serves every key."""

    def randomize(self, shape: Sequence[int]) -> None: ...

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any: ...

    def __call__(self, array: np.ndarray, /, randomize: bool = True) -> np.ndarray: ...


class _SameDrawd(MapTransform, RandomizableTransform):
    """Dictionary form of a random array transform: one draw, applied to every key (so labels stay aligned)."""

    def __init__(self, keys: Sequence[Hashable], prob: float, array: _ArrayDraw):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.array = array  # built with prob=1: whether to transform is decided here

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.array.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.array.randomize(d[self.keys[0]].shape)
        for key in self.key_iterator(d):
            d[key] = self.array(d[key], randomize=False)
        return d


class RandMissingSection(RandomizableTransform):
    """With probability ``prob``, replace one z-slice of the image by its mean (a lost or blank section)."""

    def __init__(self, prob: float = 0.1):
        super().__init__(prob)
        self.z = 0

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        self.z = int(self.R.randint(shape[0]))

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize(image.shape)
        if not self._do_transform:
            return image
        out = image.copy()
        out[self.z] = image.mean()
        return out


class RandMissingSectiond(_SameDrawd):
    def __init__(self, keys: Sequence[Hashable] = ("image",), prob: float = 0.1):
        super().__init__(keys, prob, RandMissingSection(prob=1.0))


class RandMisalignment(RandomizableTransform):
    """With probability ``prob``, shift every slice from a random z on by up to ``max_shift`` pixels in y and x.

    Apply the same draw to image and labels (the dictionary version does); voxels shifted in from
    outside are 0, and masked out by the dictionary version.
    """

    def __init__(self, prob: float = 0.1, max_shift: int = 8):
        super().__init__(prob)
        self.max_shift = max_shift
        self.z, self.shift = 0, (0, 0)

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        self.z = int(self.R.randint(1, max(shape[0], 2)))
        dy, dx = (int(v) for v in self.R.randint(-self.max_shift, self.max_shift + 1, size=2))
        self.shift = dy, dx

    def __call__(self, array: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize(array.shape)
        if not self._do_transform:
            return array
        out = array.copy()
        dy, dx = self.shift
        moved = np.zeros_like(array[self.z :])
        src_y = slice(max(-dy, 0), array.shape[1] - max(dy, 0))
        dst_y = slice(max(dy, 0), array.shape[1] - max(-dy, 0))
        src_x = slice(max(-dx, 0), array.shape[2] - max(dx, 0))
        dst_x = slice(max(dx, 0), array.shape[2] - max(-dx, 0))
        moved[:, dst_y, dst_x] = array[self.z :, src_y, src_x]
        out[self.z :] = moved
        return out


class RandMisalignmentd(_SameDrawd):
    """The mask shifts with the image, so shifted-in voxels are unlabelled."""

    def __init__(self, keys: Sequence[Hashable] = PATCH_KEYS, prob: float = 0.1, max_shift: int = 8):
        super().__init__(keys, prob, RandMisalignment(prob=1.0, max_shift=max_shift))


class HistogramMatch(Transform):
    """Match the image's intensity histogram to ``reference`` (a volume from the target domain)."""

    def __init__(self, reference: np.ndarray):
        self.reference = np.asarray(reference)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from skimage.exposure import match_histograms

        # Flat: a histogram has no shape, and the reference may be a voxel sample of any size.
        array = convert_to_numpy(image)
        matched = match_histograms(array.ravel(), self.reference.ravel()).reshape(array.shape)
        return convert_to_dst_type(matched, image)[0]  # numpy or tensor, as given (RandLambdad gives tensors)


class HistogramMatchd(MapTransform):
    def __init__(self, reference: np.ndarray, keys: Sequence[Hashable] = ("image",)):
        super().__init__(keys)
        self.array = HistogramMatch(reference)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.array(d[key])
        return d


class RandArtifactCutMix(RandomizableTransform):
    """With probability ``prob``, paste a random artifact cube (bright debris, bubbles: TRAILMAP label 3)
    into the patch; the pasted voxels become labelled background (target 0, mask 1)."""

    def __init__(self, artifacts: Sequence[np.ndarray], prob: float = 0.2):
        super().__init__(prob)
        if not artifacts:
            raise ValueError("RandArtifactCutMix needs at least one artifact cube")
        self.artifacts = [np.asarray(a) for a in artifacts]
        self.index, self.corner = 0, (0, 0, 0)

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        self.index = int(self.R.randint(len(self.artifacts)))
        size = [min(a, s) for a, s in zip(self.artifacts[self.index].shape, shape)]
        z, y, x = (int(self.R.randint(0, s - a + 1)) for a, s in zip(size, shape))
        self.corner = z, y, x

    def region(self, shape: Sequence[int]) -> tuple[slice, ...]:
        size = [min(a, s) for a, s in zip(self.artifacts[self.index].shape, shape)]
        return tuple(slice(c, c + n) for c, n in zip(self.corner, size))

    def __call__(self, data: tuple[np.ndarray, np.ndarray, np.ndarray], randomize: bool = True):
        """``data``: image, target and mask of one patch."""
        image, target, mask = data
        if randomize:
            self.randomize(image.shape)
        if not self._do_transform:
            return image, target, mask
        region = self.region(image.shape)
        artifact = self.artifacts[self.index][tuple(slice(0, r.stop - r.start) for r in region)]
        image, target, mask = image.copy(), target.copy(), mask.copy()
        image[region], target[region], mask[region] = artifact, 0, True
        return image, target, mask


class RandArtifactCutMixd(MapTransform, RandomizableTransform):
    def __init__(self, artifacts: Sequence[np.ndarray], prob: float = 0.2, keys: Sequence[Hashable] = PATCH_KEYS):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.array = RandArtifactCutMix(artifacts, prob=1.0)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.array.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            image, target, mask = (d[k] for k in self.keys)
            d.update(zip(self.keys, self.array((image, target, mask))))
        return d


class RandLocalContrast(RandomizableTransform):
    """With probability ``prob``, contrast-limited adaptive histogram equalisation (CLAHE) of a
    non-negative image, on its own [0, max] range and mapped back to it (background-referenced
    intensities run past 1)."""

    def __init__(self, prob: float = 0.2, clip_limit: float = 0.02, kernel_size: int | None = None):
        super().__init__(prob)
        self.clip_limit, self.kernel_size = clip_limit, kernel_size

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        from skimage.exposure import equalize_adapthist

        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return image
        scale = max(float(image.max()), 1e-6)
        unit = np.clip(image / scale, 0.0, 1.0)
        equalized = equalize_adapthist(unit, kernel_size=self.kernel_size, clip_limit=self.clip_limit)
        return (equalized * scale).astype(image.dtype)


class RandLocalContrastd(_SameDrawd):
    def __init__(self, keys: Sequence[Hashable] = ("image",), prob: float = 0.2, clip_limit: float = 0.02):
        super().__init__(keys, prob, RandLocalContrast(prob=1.0, clip_limit=clip_limit))


class RandInvert(RandomizableTransform):
    """With probability ``prob``, invert a normalised image (``ceiling - image``): FIB-SEM backscatter and TEM
    show the same membranes dark on light or light on dark, depending on the instrument and its export."""

    def __init__(self, prob: float = 0.2, ceiling: float = 1.0):
        super().__init__(prob)
        self.ceiling = ceiling

    def randomize(self, shape: Sequence[int] | None = None) -> None:
        super().randomize(None)

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        return (self.ceiling - image).astype(image.dtype)


class RandInvertd(_SameDrawd):
    def __init__(self, keys: Sequence[Hashable] = ("image",), prob: float = 0.2, ceiling: float = 1.0):
        super().__init__(keys, prob, RandInvert(prob=1.0, ceiling=ceiling))


class RandInPlaneLowResolution(RandomizableTransform):
    """With probability ``prob``, resample each section down by a random factor in ``zoom_range`` (area
    average) and back up (bilinear): a coarser pixel or a softer detector, sections kept apart (MONAI's
    ``RandSimulateLowResolution`` zooms z too, which would blend 50 nm sections)."""

    def __init__(self, prob: float = 0.2, zoom_range: tuple[float, float] = (0.5, 1.0)):
        super().__init__(prob)
        self.zoom_range = zoom_range
        self._zoom = 1.0

    def randomize(self, shape: Sequence[int] | None = None) -> None:
        super().randomize(None)
        self._zoom = float(self.R.uniform(*self.zoom_range))

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        import torch

        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        sections = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]  # (z, 1, y, x)
        small = [max(1, round(s * self._zoom)) for s in image.shape[1:]]
        down = torch.nn.functional.interpolate(sections, size=small, mode="area")
        up = torch.nn.functional.interpolate(down, size=tuple(image.shape[1:]), mode="bilinear", align_corners=False)
        return up[:, 0].numpy().astype(image.dtype)


class RandInPlaneLowResolutiond(_SameDrawd):
    """Image only: labels keep the full resolution the network should recover."""

    def __init__(
        self, keys: Sequence[Hashable] = ("image",), prob: float = 0.2, zoom_range: tuple[float, float] = (0.5, 1.0)
    ):
        super().__init__(keys, prob, RandInPlaneLowResolution(prob=1.0, zoom_range=zoom_range))


class RandInPlaneBlur(RandomizableTransform):
    """With probability ``prob``, a Gaussian blur of each section with a random in-plane sigma (pixels) in
    ``sigma_range``: a defocused beam or a softer detector, sections kept apart."""

    def __init__(self, prob: float = 0.2, sigma_range: tuple[float, float] = (0.3, 1.5)):
        super().__init__(prob)
        self.sigma_range = sigma_range
        self._sigma = 0.0

    def randomize(self, shape: Sequence[int] | None = None) -> None:
        super().randomize(None)
        self._sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        return gaussian_filter(image, sigma=(0.0, self._sigma, self._sigma)).astype(image.dtype)


class RandInPlaneBlurd(_SameDrawd):
    """Image only: the labels stay sharp."""

    def __init__(
        self, keys: Sequence[Hashable] = ("image",), prob: float = 0.2, sigma_range: tuple[float, float] = (0.3, 1.5)
    ):
        super().__init__(keys, prob, RandInPlaneBlur(prob=1.0, sigma_range=sigma_range))
