"""Folders of 2D PNG slices, read by opening only the slices in a region.

Safety: the folder is inside ``root`` and holds no symbolic link resolving outside it (:func:`.safety.check_folder`).
"""

from __future__ import annotations

import os

import numpy as np

from ...errors import VolumeError
from .base import Slices, VolumeSource, check_dtype
from .safety import check_folder

_PNG_MODES = {
    "1": np.uint8,
    "L": np.uint8,
    "P": np.uint8,
    "LA": np.uint8,
    "RGB": np.uint8,
    "RGBA": np.uint8,
    "I;16": np.uint16,
    "I;16B": np.uint16,
    "I;16L": np.uint16,
    "I": np.int32,
    "F": np.float32,
}


class PngStackSource(VolumeSource):
    """A folder of 2D PNG slices in name order; colour slices of a grey image keep their first channel."""

    source_format = "png_stack"

    def _open(self, dataset: str | None) -> None:
        from PIL import Image

        check_folder(self.path, self._root, self.name)
        with os.scandir(self.path) as entries:
            self._files = sorted(e.name for e in entries if e.name.lower().endswith(".png") and e.is_file())
        if not self._files:
            raise VolumeError(f"'{self.name}' holds no PNG slices")
        with Image.open(os.path.join(self.path, self._files[0])) as first:
            width, height = first.size
            mode = first.mode
        if mode not in _PNG_MODES:
            raise VolumeError(f"PNG slices in '{self.name}' have the unsupported mode '{mode}'")
        self._set_axes((len(self._files), height, width))
        self.dtype = check_dtype(_PNG_MODES[mode], self.name)

    def _read(self, roi: Slices) -> np.ndarray:
        from PIL import Image

        zs, ys, xs = roi
        out = np.empty(tuple(s.stop - s.start for s in roi), self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            with Image.open(os.path.join(self.path, self._files[z])) as image:
                plane = np.asarray(image)
            if plane.ndim == 3:  # RGB(A) slices of a grey image: keep one channel
                plane = plane[..., 0]
            if plane.shape != self.shape[1:]:
                raise VolumeError(
                    f"PNG slices in '{self.name}' differ in shape: '{self._files[z]}' is {plane.shape}, "
                    f"'{self._files[0]}' is {self.shape[1:]}"
                )
            out[i] = plane[ys, xs]
        return out
