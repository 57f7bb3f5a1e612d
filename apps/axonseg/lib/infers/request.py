"""An infer request, checked once where it arrives: the typed :class:`InferRequest` the worker and
``SegmentationInfer`` take, and what a client may send (``infer_config``, ``REQUEST_KEYS``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..configs.spec import StructureSpec
from ..machine import check_device
from ..params import boolean, choice, refuse_unknown
from .postprocessing import default_options, resolve
from .predict import check_tta


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

    def to_dict(self) -> dict[str, Any]:
        """The request as plain data, what a queued job carries (job arguments travel as JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferRequest:
        """The request :meth:`to_dict` made: checked once by the API, not parsed again."""
        return cls(**data)


def infer_config(spec: StructureSpec) -> dict[str, Any]:
    """What a client may override per request, at its defaults: the model's ``config`` in ``/info/`` (Slicer
    shows it under the model's options and sends all of it back with every request)."""
    return {"tta": 1, "device": "auto", "postprocessing": spec.postprocessing, **default_options(spec)}


# Options of a request besides the advertised ones (infer_config) and the requested post-processing's.
REPLY_OPTIONS = ("save_label", "label_values", "result_dtype", "result_compress")
# Keys of a request that are no option, let through: ``client_id`` (every MONAI Label client adds it);
# ``result_extension`` (Slicer and OHIF; the reply is NRRD, what both ask for), ``restore_label_idx`` (OHIF),
# ``label_info`` (Slicer); ``images`` (batch infer); ``model``, ``image``, ``label`` and ``max_voxels_in_memory``
# (MONAI Label's infer task request, ``SegmentationInfer.__call__``).
REQUEST_KEYS = (
    "client_id", "result_extension", "restore_label_idx", "label_info", "images", "model", "image", "label",
    "max_voxels_in_memory",
)  # fmt: skip


def parse_infer_request(spec: StructureSpec, request: dict[str, Any]) -> InferRequest:
    """The options of an infer or batch-infer request against their bounds (``check_tta``, ``check_device``,
    ``postprocessing.resolve``); InvalidRequest names the first one out, and every key that is neither an
    option nor one of :data:`REQUEST_KEYS`. The API calls it once, before queueing; the job carries the
    result (:meth:`InferRequest.to_dict`)."""
    requested = request.get("postprocessing") or spec.postprocessing
    taken = default_options(spec, requested)  # the requested method's options (an unknown method: 400 here)
    advertised = infer_config(spec)  # sent back by Slicer even when another method is requested
    accepted = (*advertised, *(k for k in taken if k not in advertised), *REPLY_OPTIONS)
    hint = f"options of '{spec.name}' with '{requested}' post-processing are: {', '.join(accepted)}"
    refuse_unknown(request, (*accepted, *REQUEST_KEYS), "infer option", hint)
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
