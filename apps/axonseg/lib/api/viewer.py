"""Neuroglancer over the volume store: the Zarr folders served read-only, and the bundled client.

    GET /zarr/{image}/...                    the image's OME-Zarr group (pyramid, annotators' labels)
    GET /zarr/{image}/outputs/{model}/...    the newest finished whole-volume job of the model
    GET /viewer/{image}                      neuroglancer with the image, each output and each label
    GET /viewer/{image}/v/1/...              the neuroglancer client of the ``neuroglancer`` package

The package's client is built to talk to neuroglancer's Python server, so the few routes it needs are
answered here: ``events/1`` (server-sent events) sends the viewer state once and then keeps the stream
open; ``state/1`` and ``action/1`` accept the client's updates without keeping them (the state of a
view is in its URL; the server's data is read-only).

The viewer is served from this origin, so it needs no cross-origin access; a lab's own neuroglancer on
another origin is let in only if it is listed in ``MONAI_LABEL_CORS_ORIGINS`` (``lib.api.install.cors_settings``).
A missing chunk is a 404, which neuroglancer reads as empty (the store skips empty chunks).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from ..datastore import check_image_id
from ..errors import NotFound
from ..identifiers import log_safe
from ..jobs.volume_jobs import output_folder
from ..services import Services
from ..transforms.intensity import IntensityStats
from ..volumes.outputs import OUTPUTS
from .common import Svc

logger = logging.getLogger(__name__)
router = APIRouter()
NO_CACHE = {"Cache-Control": "no-cache"}


def client_dir() -> str:
    """The neuroglancer client's built files, from the installed package (nothing is fetched)."""
    found = importlib.util.find_spec("neuroglancer")
    if found is None or not found.submodule_search_locations:
        raise NotFound("the neuroglancer package is not installed; `make serve` installs it")
    return os.path.join(found.submodule_search_locations[0], "static", "client")


def _file_inside(root: str, path: str) -> str:
    """``root/path`` if it is a file inside ``root`` (after resolving links and ``..``), else NotFound."""
    if "\x00" in path:
        raise NotFound("no file with a NUL in its name")
    root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or not os.path.isfile(full):
        raise NotFound(f"no file '{path}'")
    return full


def _image_root(svc: Services, image_id: str, path: str) -> tuple[str, str]:
    """The folder a ``/zarr/{image}/{path}`` request reads from, and the path inside it."""
    image = svc.db.image(check_image_id(image_id))
    if image is None or not image.storage_uri:
        raise NotFound(f"image '{image_id}' is not in the volume store")
    parts = path.split("/")
    if parts[0] == "outputs":
        if len(parts) < 3:
            raise NotFound("ask for /zarr/{image}/outputs/{model}/...")
        folder = output_folder(svc.db, image.id, parts[1])
        if folder is None:
            raise NotFound(f"no finished whole-volume job of '{parts[1]}' on '{image_id}'")
        return folder, "/".join(parts[2:])
    if parts[0] == "raw" and image.registered:  # a registered Zarr/N5 is read where it lies
        return os.path.join(image.storage_uri, image.dataset or ""), "/".join(parts[1:])
    return svc.datastore.store.group_path(image.id), path


@router.get("/zarr/{image}/{path:path}", summary="The image's and its outputs' Zarr files (read-only)")
def zarr_file(svc: Svc, image: str, path: str):
    root, inner = _image_root(svc, image, path)
    try:
        full = _file_inside(root, inner)
    except NotFound:
        # neuroglancer probes for files that need not exist (zarr v3 metadata, empty chunks)
        return Response(status_code=404, headers=NO_CACHE)
    logger.info(f"zarr {image}/{log_safe(path)}")  # what a viewer asked for, in the server log
    metadata = inner.endswith((".zattrs", ".zarray", ".zgroup"))
    return FileResponse(
        full, headers=NO_CACHE, media_type="application/json" if metadata else "application/octet-stream"
    )


_TOKEN = "1"  # neuroglancer's client finds its server's routes by a token in its URL
_KEEPALIVE_S = 15.0


@router.get("/viewer/{image}", summary="Open the image, its outputs and labels in neuroglancer")
def viewer(image: str):
    check_image_id(image)
    return RedirectResponse(f"/viewer/{image}/v/{_TOKEN}/")


@router.get("/viewer/{image}/v/{token}/{path:path}", include_in_schema=False)
def viewer_client(image: str, token: str, path: str):
    return FileResponse(_file_inside(client_dir(), path or "index.html"))


@router.get("/viewer/{image}/events/{token}", include_in_schema=False)
async def viewer_events(svc: Svc, image: str, token: str, request: Request):
    state = await run_in_threadpool(viewer_state, svc, image, str(request.base_url).rstrip("/"))

    async def stream():
        yield f"data: {json.dumps({'k': 's', 's': state, 'g': '1'})}\n\n"
        while not await request.is_disconnected():
            await asyncio.sleep(_KEEPALIVE_S)
            yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/viewer/{image}/state/{token}", include_in_schema=False)
@router.post("/viewer/{image}/action/{token}", include_in_schema=False)
async def viewer_update(image: str, token: str):
    return {"g": "1"}


def _contrast(image) -> dict[str, Any]:
    """The raw layer's contrast: the image's 1st to 99.9th percentile (from ingest) to black and white."""
    try:
        lower, upper = IntensityStats.from_json(image.intensity).bounds((1.0, 99.9))
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}
    return {
        "shader": "#uicontrol invlerp normalized\nvoid main() { emitGrayscale(normalized()); }",
        "shaderControls": {"normalized": {"range": [lower, upper]}},
    }


def viewer_state(svc: Services, image_id: str, base_url: str) -> dict[str, Any]:
    """Neuroglancer's state: the image, each finished output and each label array, at the voxel size."""
    image = svc.db.image(check_image_id(image_id))
    if image is None or not image.storage_uri:
        raise NotFound(f"image '{image_id}' is not in the volume store")
    size = image.voxel_size_um or [1.0, 1.0, 1.0]
    zarr = f"zarr://{base_url}/zarr/{image.id}"
    raw = f"{zarr}/raw/" if image.registered else f"{zarr}/"
    layers: list[dict[str, Any]] = [{"type": "image", "source": raw, "name": image.id, **_contrast(image)}]
    for model in svc.task_configs:
        if output_folder(svc.db, image.id, model) is None:
            continue
        for name in OUTPUTS:
            kind = "image" if name == "probabilities" else "segmentation"
            layer = {"type": kind, "source": f"{zarr}/outputs/{model}/{name}/", "name": f"{model} {name}"}
            if kind == "image":
                layer["shader"] = "void main() { emitRGB(vec3(toNormalized(getDataValue()), 0.0, 0.0)); }"
                layer["blend"] = "additive"
            layers.append(layer)
    labels = os.path.join(svc.datastore.store.group_path(image.id), "labels")
    for name in sorted(os.listdir(labels)) if os.path.isdir(labels) else []:
        if os.path.isfile(os.path.join(labels, name, "0", ".zarray")):
            layers.append({"type": "segmentation", "source": f"{zarr}/labels/{name}/", "name": f"label {name}"})
    shape = image.shape or [1, 1, 1]
    return {
        "dimensions": {axis: [size[i] * 1e-6, "m"] for i, axis in ((2, "x"), (1, "y"), (0, "z"))},
        "position": [shape[2] / 2, shape[1] / 2, shape[0] / 2],
        "crossSectionScale": 1,
        "layers": layers,
        "layout": "4panel",
    }
