"""Model versions (every set of weights a model has served, and roll-back) and self-supervised encoders.

GET  /models/{model}/versions               every set of weights the model has served
POST /models/{model}/versions/{id}/activate  serve an earlier version (roll back)
GET  /encoders/                             self-supervised pretrained encoders (ssl_pretrain), per structure
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..db.models import ModelVersion
from ..db.store import file_checksum
from ..errors import NotFound
from ..identifiers import check_version
from .common import Svc, timestamp

router = APIRouter()


def _version(row: ModelVersion) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "source": row.source,
        "file": os.path.basename(row.path),
        "checksum": row.checksum,
        "metrics": row.metrics,
        "active": row.active,
        "created_at": timestamp(row.created_at),
    }


@router.get("/models/{model}/versions", summary="Every set of weights the model has served")
async def model_versions(svc: Svc, model: str):
    svc.task_config(model)
    return [_version(row) for row in await run_in_threadpool(svc.db.model_versions, model)]


@router.post("/models/{model}/versions/{version_id}/activate", summary="Serve an earlier version (roll back)")
async def activate_model_version(svc: Svc, model: str, version_id: str):
    """Workers pick the file up at their next job; the version becomes the active one in the database."""
    config = svc.task_config(model)
    number = check_version(version_id, "version id")

    def activate() -> ModelVersion:
        row = next((v for v in svc.db.model_versions(model) if v.id == number), None)
        if row is None:
            raise NotFound(f"'{model}' has no version {number}; GET /models/{model}/versions lists them")
        if not os.path.isfile(row.path) or file_checksum(row.path) != row.checksum:
            # e.g. a version recorded before versions were archived: its file has been overwritten since
            raise NotFound(f"version {number} of '{model}' cannot be served: {row.path} is gone or changed")
        config.weights.serve(row.path)
        return svc.db.register_model_version(model, row.path, row.source)

    return _version(await run_in_threadpool(activate))


@router.get("/encoders/", summary="Self-supervised pretrained encoders (from ssl_pretrain)")
async def encoder_versions(svc: Svc, structure: str | None = None):
    """Each can be given to a model's trainer as ``pretrained_encoder`` (its id)."""
    if structure is not None:
        svc.task_config(structure)
    rows = await run_in_threadpool(svc.db.encoder_versions, structure)
    return [
        {
            "id": row.id,
            "structure": row.structure,
            "modality": row.modality,
            "task": row.task,
            "file": os.path.basename(row.path),
            "checksum": row.checksum,
            "metrics": row.metrics,
            "params": row.params,
            "created_at": timestamp(row.created_at),
        }
        for row in rows
    ]
