"""What every route module shares: the services dependency, request-body parsing and reply formatting."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from fastapi import UploadFile

from ..errors import InvalidRequest
from ..services import Services, Svc
from ..uploads import save_upload

__all__ = ["Svc", "finite", "parse_json_object", "save_upload_file", "timestamp"]


def parse_json_object(text: str | None, name: str = "params") -> dict[str, Any]:
    """A form field holding a JSON object (MONAI Label sends ``params`` and ``info`` this way); 400 otherwise."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{name} must be a JSON object: {e}") from e
    except RecursionError:
        raise InvalidRequest(f"{name} nest objects or lists too deeply") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name} must be a JSON object")
    return value


def save_upload_file(svc: Services, file: UploadFile) -> str:
    """The uploaded file, written to the work folder's uploads (bounded by the disk floor)."""
    return save_upload(file, svc.settings.workdir, svc.settings.min_free_bytes)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity inside it as None (JSON replies refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def timestamp(ts: datetime | None) -> str | None:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else None
