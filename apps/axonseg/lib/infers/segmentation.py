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
from ..machine import check_device, default_device
from ..networks import load_weights
from ..params import LABEL_VALUE, boolean, choice, refuse_unknown
from ..transforms.intensity import IntensityStats
from ..transforms.io import Volume, copy_atomic, read_volume, write_volume
from .postprocessing import default_options, resolve, structure_mask
from .predict import check_tta, segment, voxel_size_nm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferRequest:
    """An infer request's options, checked: ``tta``, ``device`` (``auto`` or a torch device), the
    post-processing ``method`` with its complete ``options``, ``save_label`` (keep the prediction of a
    datastore region as its ``original`` label), and the form of the reply's label: ``label_values``
    (``ids``: what the method produced, object ids for instance methods; ``classes``: every object as
    the structure's label value, what a viewer's segment list shows) and ``result_dtype`` (MONAI Label's
    name; default uint32 for ids, uint8 for classes) and ``result_compress`` (gzip the NRRD)."""

    tta: int
    device: str
    method: str
    options: dict[str, Any]
    save_label: bool = True
    label_values: str = "ids"
    result_dtype: str | None = None
    result_compress: bool = True


def infer_config(spec: StructureSpec) -> dict[str, Any]:
    """What a client may override per request, at its defaults: the model's ``config`` in ``/info/`` (Slicer
    shows it under the model's options and sends all of it back with every request)."""
    return {"tta": 1, "device": "auto", "postprocessing": spec.postprocessing, **default_options(spec)}


# Options of a request besides the advertised ones (infer_config) and the requested post-processing's.
REPLY_OPTIONS = ("save_label", "label_values", "result_dtype", "result_compress")
# Keys of a request that are no option, let through: ``client_id`` (every MONAI Label client adds it);
# ``result_extension`` (Slicer and OHIF; the reply is NRRD, what both ask for), ``restore_label_idx`` (OHIF),
# ``label_info`` (Slicer); ``images`` (batch infer); ``model``, ``image``, ``label`` (MONAI Label's infer task
# request, lib.jobs.tasks.infer) and ``max_voxels_in_memory`` (the API's, added before queueing).
REQUEST_KEYS = (
    "client_id", "result_extension", "restore_label_idx", "label_info", "images", "model", "image", "label",
    "max_voxels_in_memory",
)  # fmt: skip


def parse_infer_request(spec: StructureSpec, request: dict[str, Any]) -> InferRequest:
    """The options of an infer or batch-infer request against their bounds (``check_tta``, ``check_device``,
    ``postprocessing.resolve``); InvalidRequest names the first one out, and every key that is neither an
    option nor one of :data:`REQUEST_KEYS`. The API calls it before queueing and :meth:`SegmentationInfer.run`
    again (whoever queued the job)."""
    requested = request.get("postprocessing") or spec.postprocessing
    taken = default_options(spec, requested)  # the requested method's options (an unknown method: 400 here)
    advertised = infer_config(spec)  # sent back by Slicer even when another method is requested
    options = (*advertised, *(k for k in taken if k not in advertised), *REPLY_OPTIONS)
    hint = f"options of '{spec.name}' with '{requested}' post-processing are: {', '.join(options)}"
    refuse_unknown(request, (*options, *REQUEST_KEYS), "infer option", hint)
    tta = check_tta(request.get("tta", 1))
    device = check_device(request.get("device", "auto"))
    given = {name: request[name] for name in taken if name in request}
    method, options = resolve(spec, requested, **given)
    # the default method's options a request carries besides (echoed, not run): still inside their bounds
    echoed = {k: request[k] for k in default_options(spec) if k in request and k not in taken}
    if echoed:
        resolve(spec, spec.postprocessing, **echoed)
    save = boolean("save_label", request.get("save_label", True))
    values = choice("label_values", request.get("label_values", "ids"), LABEL_VALUES)
    dtype = request.get("result_dtype")
    dtype = None if dtype in (None, "") else choice("result_dtype", dtype, RESULT_DTYPES)
    compress = boolean("result_compress", request.get("result_compress", True))
    return InferRequest(tta, device, method, options, save, values, dtype, compress)


LABEL_VALUES = ("ids", "classes")
RESULT_DTYPES = ("uint8", "uint16", "uint32")


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
        self,
        volume: Volume,
        request: dict[str, Any],
        stats: IntensityStats | None = None,
        inner: tuple[slice, slice, slice] | None = None,
        anchors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Plain function form: segment ``volume``; returns the label array and result params.

        ``stats``: the intensity statistics of the image ``volume`` was read from (None: ``volume`` is a
        whole image); ``inner``: the region to return when ``volume`` holds it with context; ``anchors``:
        a ``trace`` request's, on the returned label's grid (:func:`read_anchors`).
        """
        parsed = parse_infer_request(self.spec, request)
        tta, method, options = parsed.tta, parsed.method, parsed.options
        device = default_device() if parsed.device == "auto" else parsed.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidRequest(f"device '{device}' requested, but this server has no CUDA GPU")
        network, meta, path = self.weights.load(device)
        start = time.time()
        voxel_size = voxel_size_nm(volume)
        label = segment(
            network, volume.array, self.spec, device, tta, method, stats, inner, voxel_size, anchors, **options
        )
        elapsed = time.time() - start
        params = {
            "model": self.spec.name,
            "label_names": self.spec.labels,
            "weights": os.path.basename(path),
            "weights_epoch": meta.get("epoch"),
            "shape": list(label.shape),
            "spacing_um": list(volume.spacing),
            "foreground_voxels": int(np.count_nonzero(structure_mask(label, method))),
            "tta": tta,
            "postprocessing": {"method": method, **options},
            "latencies": {
                "infer": round(elapsed, 3),
                "mvox_per_s": round(label.size / 1e6 / max(elapsed, 1e-9), 3),
            },
        }
        return label, params

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """MONAI Label's form: ``request["image"]`` is a file holding a whole image (an upload); a
        ``request["label"]`` file (MONAI Label's name for a label sent with an infer request) holds anchors."""
        volume = read_volume(request["image"], max_voxels_in_memory=request.get("max_voxels_in_memory"))
        anchors = read_anchors(request["label"], volume.array.shape) if request.get("label") else None
        label, params = self.run(volume, request, anchors=anchors)
        parsed = parse_infer_request(self.spec, request)
        reply = reply_label(label, parsed, self.spec)
        return write_label_file(reply, volume, self.spec.name, parsed.result_compress), params


def write_label_file(label: np.ndarray, volume: Volume, prefix: str, compress: bool = True) -> str:
    """A temporary NRRD of ``label`` with ``volume``'s spacing, origin and direction (what the client was served)."""
    fd, result = tempfile.mkstemp(suffix=".nrrd", prefix=f"{prefix}_")
    os.close(fd)
    write_volume(result, Volume(label, volume.spacing, volume.origin, volume.direction), compress=compress)
    return result
