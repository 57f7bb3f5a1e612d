"""The DICOMweb routes the OHIF build in the monailabel wheel calls (its ``app-config.js`` sets ``qidoRoot`` and
``wadoRoot`` to MONAI Label's ``/proxy/dicom/...``), answered from the datastore by :mod:`lib.dicomweb.web`, or
forwarded to a lab's DICOMweb server when ``--conf dicomweb_url`` (or AXONSEG_DICOMWEB_URL) names one.

    GET        /proxy/dicom/qido/...   QIDO-RS searches
    GET        /proxy/dicom/wado/...   WADO-RS metadata, frames and instances
    POST       /proxy/dicom/wado/studies[/{study}]   STOW-RS: a DICOM SEG becomes label versions
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..dicomweb.seg import stow_delimiter
from ..dicomweb.web import DicomWeb
from ..errors import NotFound
from ..services import Services
from ..uploads import remove_upload, save_stream
from .common import Svc

router = APIRouter()


def _bridge(svc: Services) -> DicomWeb:
    return DicomWeb(svc.db, svc.datastore, svc.dicom_frames, svc.settings.max_voxels_in_memory)


def _wado_root(request: Request) -> str:
    return str(request.url).split("/proxy/dicom/")[0] + "/proxy/dicom/wado"


async def _save_body(svc: Services, request: Request) -> str:
    """The request body, streamed to a file in the work directory's uploads (a body of up to the upload limit is
    never held in memory; the limit's 413 and the disk floor's 507 still apply)."""
    try:
        declared = max(0, int(request.headers.get("content-length", 0)))
    except ValueError:
        declared = 0
    workdir, floor = svc.settings.workdir, svc.settings.min_free_bytes
    return await save_stream(request.stream(), workdir, floor, "stow.multipart", declared)


async def _forwarded(svc: Services, request: Request, op: str, path: str) -> Response | None:
    """MONAI Label's proxy, when a lab's DICOMweb server holds the studies."""
    if not svc.settings.dicomweb_url:
        return None
    from monailabel.config import settings
    from monailabel.endpoints.proxy import proxy_dicom

    settings.MONAI_LABEL_STUDIES = svc.settings.dicomweb_url
    return await proxy_dicom(request, op, path)


@router.api_route("/proxy/dicom/qido/{path:path}", methods=["GET"], include_in_schema=False)
async def qido(svc: Svc, request: Request, path: str):
    forwarded = await _forwarded(svc, request, "qido", path)
    if forwarded is not None:
        return forwarded
    if path.rstrip("/").endswith("metadata"):  # some OHIF versions ask QIDO for metadata (as the stock proxy)
        return await run_in_threadpool(_bridge(svc).wado, path, _wado_root(request))
    return await run_in_threadpool(_bridge(svc).qido, path, dict(request.query_params))


@router.api_route("/proxy/dicom/wado/{path:path}", methods=["GET", "POST"], include_in_schema=False)
async def wado(svc: Svc, request: Request, path: str):
    forwarded = await _forwarded(svc, request, "wado", path)
    if forwarded is not None:
        return forwarded
    if request.method == "POST":
        parts = path.strip("/").split("/")
        if parts[0] != "studies" or len(parts) > 2:
            raise NotFound(f"STOW-RS stores to /studies or /studies/{{study}}, not '{path}'")
        content_type = request.headers.get("content-type", "")
        stow_delimiter(content_type)  # 415/400 before a byte of the body is read
        body = await _save_body(svc, request)
        try:
            study = parts[1] if len(parts) == 2 else None
            return await run_in_threadpool(_bridge(svc).stow, body, content_type, study)
        finally:
            remove_upload(body)
    return await run_in_threadpool(_bridge(svc).wado, path, _wado_root(request))
