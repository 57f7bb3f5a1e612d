"""The MONAI Label infer task for one structure: volume in, NRRD label on the same geometry out."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..configs.spec import StructureSpec
from ..errors import InvalidRequest
from ..machine import default_device
from ..networks import load_weights
from ..params import LABEL_VALUE
from ..transforms.intensity import IntensityStats
from ..transforms.io import Volume, copy_atomic, read_volume, write_volume
from .postprocessing import structure_mask
from .predict import Predictor, voxel_size_nm
from .request import InferRequest, infer_config, parse_infer_request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferInput:
    """What one infer request segments: ``volume``, the voxels the network sees (a datastore region with
    its context, or a whole uploaded image); ``reply``, the voxels and geometry the reply's label covers
    (the region itself); ``stats``, the intensity statistics of their image (None: ``volume`` is the whole
    image); ``inner``, where ``reply`` lies inside ``volume`` (None: all of it)."""

    volume: Volume
    reply: Volume
    stats: IntensityStats | None = None
    inner: tuple[slice, slice, slice] | None = None


def read_anchors(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The anchors of a ``trace`` request (the label file sent with it) on the grid of the label the reply
    holds (``shape``): neurite ids, 0 where no anchor is placed. InvalidRequest when they do not fit."""
    try:  # never more voxels than the reply's label: a compressed file cannot unpack into more
        array = read_volume(path, max_voxels_in_memory=math.prod(shape)).array
    except Exception as e:  # any reader's failure on a client's file is the client's to fix
        raise InvalidRequest(f"the anchors (the label sent with the request) cannot be read: {e}") from e
    if tuple(array.shape) != tuple(shape):
        raise InvalidRequest(
            f"the anchors (the label sent with the request) are {list(array.shape)} voxels, "
            f"the image {list(shape)}; send them on the image's grid"
        )
    if not LABEL_VALUE.holds(array):
        raise InvalidRequest("anchors must be whole neurite ids from 0 (no anchor) to 4294967295")
    return array.astype(np.uint32)


def reply_label(label: np.ndarray, request: InferRequest, spec: StructureSpec) -> np.ndarray:
    """The label as the request asked to receive it (``label_values``, ``result_dtype``); what the server
    keeps (the ``original`` label) is the label itself."""
    if request.label_values == "classes":
        label = np.where(structure_mask(label, request.method), spec.labels[spec.label_name], 0)
    dtype = np.dtype(request.result_dtype or ("uint8" if request.label_values == "classes" else label.dtype))
    if label.size and np.issubdtype(dtype, np.integer) and int(label.max()) > np.iinfo(dtype).max:
        raise InvalidRequest(
            f"the label holds ids up to {int(label.max())}, more than {dtype} holds; "
            "ask for result_dtype uint32, or label_values classes"
        )
    return label.astype(dtype, copy=False)


class ModelWeights:
    """The weights a model serves: the latest retrained file if there is one, else the shipped one.

    The network is cached and reloaded only when the chosen file changes (path or mtime).
    """

    def __init__(self, shipped_path: str, trained_path: str):
        self.shipped_path = shipped_path
        self.trained_path = trained_path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[str, float, str], torch.nn.Module, dict] | None = None

    @property
    def versions_dir(self) -> str:
        """Every published set of weights, kept for rollback."""
        return os.path.join(os.path.dirname(self.trained_path), "versions")

    def publish(self, candidate: str) -> str:
        """Archive the weights file ``candidate`` as a new version and serve it; returns the archived path.

        Both steps end in a rename, so a reader (an infer worker reloading) never sees a partial file.
        """
        os.makedirs(self.versions_dir, exist_ok=True)
        name = os.path.splitext(os.path.basename(self.trained_path))[0]
        archived = os.path.join(self.versions_dir, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.pt")
        copy_atomic(candidate, archived)
        os.replace(candidate, self.trained_path)
        return archived

    def serve(self, path: str) -> None:
        """Serve the weights at ``path`` (an archived or the shipped version), e.g. to roll back."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} is gone")
        copy_atomic(path, self.trained_path)

    def path(self) -> str | None:
        for path in (self.trained_path, self.shipped_path):
            if path and os.path.exists(path):
                return path
        return None

    def load(self, device: str) -> tuple[torch.nn.Module, dict, str]:
        path = self.path()
        if path is None:
            raise FileNotFoundError(f"no weights at {self.trained_path} or {self.shipped_path}")
        key = (path, os.path.getmtime(path), device)
        with self._lock:
            if self._cached is None or self._cached[0] != key:
                network, meta = load_weights(path, device)
                self._cached = (key, network, meta)
                logger.info(f"loaded weights {path} on {device}")
            return self._cached[1], self._cached[2], path


class SegmentationInfer(InferTask):
    """Segments ``spec.label_name`` in a 3D volume with a sliding-window residual U-Net."""

    def __init__(self, spec: StructureSpec, weights: ModelWeights):
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=spec.labels,
            dimension=3,
            description=spec.description,
            # What a client may override per request (Slicer shows these under the model's options);
            # their bounds: parse_infer_request.
            config=infer_config(spec),
        )
        self.spec = spec
        self.weights = weights

    def is_valid(self) -> bool:
        return self.weights.path() is not None

    def get_path(self, validate=True):
        return self.weights.path()

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "modality": self.spec.modality,
            "patch_size": list(self.spec.patch_size),
        }

    def run(
        self, source: InferInput, request: InferRequest, anchors_path: str | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Segment ``source``; returns the label on its reply grid (what the server keeps) and result params.
        ``anchors_path``: the label file sent with a ``trace`` request, on the reply's grid (:func:`read_anchors`).
        """
        anchors = read_anchors(anchors_path, source.reply.array.shape) if anchors_path else None
        device = default_device() if request.device == "auto" else request.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidRequest(f"device '{device}' requested, but this server has no CUDA GPU")
        network, meta, path = self.weights.load(device)
        start = time.time()
        predictor = Predictor(network, self.spec, device, source.stats, voxel_size_nm(source.volume))
        method, options = request.method, request.options
        label = predictor.segment(source.volume.array, request.tta, method, source.inner, anchors, **options)
        elapsed = time.time() - start
        params = {
            "model": self.spec.name,
            "label_names": self.spec.labels,
            "weights": os.path.basename(path),
            "weights_epoch": meta.get("epoch"),
            "shape": list(label.shape),
            "spacing_um": list(source.volume.spacing),
            "foreground_voxels": int(np.count_nonzero(structure_mask(label, method))),
            "tta": request.tta,
            "postprocessing": {"method": method, **options},
            "latencies": {
                "infer": round(elapsed, 3),
                "mvox_per_s": round(label.size / 1e6 / max(elapsed, 1e-9), 3),
            },
        }
        return label, params

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """MONAI Label's form (its interface; the benchmarks): ``request["image"]`` is a file holding a whole
        image; a ``request["label"]`` file (MONAI Label's name for a label sent with an infer request) holds
        anchors. Returns a temporary NRRD of the reply label, which the caller removes."""
        parsed = parse_infer_request(self.spec, request)
        volume = read_volume(request["image"], max_voxels_in_memory=request.get("max_voxels_in_memory"))
        label, params = self.run(InferInput(volume, volume), parsed, request.get("label"))
        return write_label_file(reply_label(label, parsed, self.spec), volume, parsed.result_compress), params


def write_label_file(label: np.ndarray, geometry: Volume, compress: bool = True) -> str:
    """A temporary NRRD of ``label`` with ``geometry``'s spacing, origin and direction (what the client was served)."""
    fd, path = tempfile.mkstemp(suffix=".nrrd", prefix="label_")
    os.close(fd)
    write_volume(path, Volume(label, geometry.spacing, geometry.origin, geometry.direction), compress=compress)
    return path


def encode_label(label: np.ndarray, geometry: Volume, compress: bool = True) -> bytes:
    """The NRRD bytes of :func:`write_label_file`: the one form a label takes from the worker to the client."""
    path = write_label_file(label, geometry, compress)
    try:
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.remove(path)
