"""Active learning: the next region to label, leased to the annotator who asked, and the live leases.

POST /activelearning/{strategy}   next sample (MONAI Label's shape, plus the region's DICOM UIDs for OHIF)
GET  /leases/                     live annotator leases
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..dicomweb.series import uids_of
from .common import Svc

router = APIRouter()


@router.post("/activelearning/{strategy}", summary="Next sample: a region chosen by the strategy, leased to you")
def next_sample(svc: Svc, strategy: str, params: dict | None = None):
    """MONAI Label's reply, plus the region's DICOM UIDs (OHIF's panel opens the study it names)."""
    result = svc.next_sample(strategy, dict(params or {}))
    return {**result, **uids_of(svc.db, result["id"])} if result.get("id") else result


@router.get("/leases/", summary="Live annotator leases")
async def leases(svc: Svc):
    rows = await run_in_threadpool(svc.db.leases)
    return [{"image": r.image_id, "client_id": r.client_id, "expires_at": r.expires_at.isoformat()} for r in rows]
