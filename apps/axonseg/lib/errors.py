"""Errors a client can cause. Each carries the HTTP status the server answers with."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


class AxonSegError(Exception):
    """Base class: ``str(error)`` is shown to the user, ``status_code`` is the HTTP reply."""

    status_code = 400


class InvalidRequest(AxonSegError):
    status_code = 400


class Unauthorized(AxonSegError):
    """No valid login (wrong password, expired or foreign token)."""

    status_code = 401


class Forbidden(AxonSegError):
    """The caller's role or identity does not allow this (e.g. cancelling another user's job)."""

    status_code = 403


class NotFound(AxonSegError):
    status_code = 404


class Conflict(AxonSegError):
    """The request collides with what someone else holds (a region leased to another annotator)."""

    status_code = 409


class UploadTooLarge(AxonSegError):
    status_code = 413


class UnsupportedMediaType(AxonSegError):
    """A body in a format the route does not take."""

    status_code = 415


class VolumeError(AxonSegError, ValueError):
    """A file that cannot be used as a 3D volume (unreadable, wrong dimensions, empty, all-NaN)."""

    status_code = 422


class Busy(AxonSegError):
    """The work cannot be queued now (e.g. training already running and enqueue not asked for)."""

    status_code = 429


class InsufficientStorage(AxonSegError):
    """An upload over the user's quota, or one that would leave the server's disk too full."""

    status_code = 507


class JobFailed(AxonSegError):
    status_code = 500


class JobStopped(AxonSegError):
    """The job was cancelled (``DELETE /jobs/{id}``) before it finished: a request, not a crash."""

    status_code = 409


class ServiceUnavailable(AxonSegError):
    """Redis or the workers are not there; nothing was submitted."""

    status_code = 503


class JobTimeout(AxonSegError):
    status_code = 504


# Errors cross the queue as plain data (JSON): a worker returns :func:`error_result`, the API raises
# :func:`error_from_result` of it. The kind travels as its HTTP status; where kinds share a status (400, 409),
# the first one defined stands for it, so the client gets the same reply.
def _kinds_by_status() -> dict[int, type[AxonSegError]]:
    table: dict[int, type[AxonSegError]] = {}
    pending = list(AxonSegError.__subclasses__())
    while pending:
        kind = pending.pop(0)
        table.setdefault(kind.status_code, kind)
        pending.extend(kind.__subclasses__())
    return table


ERROR_KINDS = _kinds_by_status()


def error_result(error: AxonSegError) -> dict[str, Any]:
    """A worker's job result for an error the request caused: a result, not a failure (retrying cannot help)."""
    return {"error": str(error), "status_code": error.status_code}


def error_from_status(status_code: int, message: str) -> AxonSegError:
    """The error of kind ``status_code`` again; an unknown status is a :class:`JobFailed` (500)."""
    return ERROR_KINDS.get(status_code, JobFailed)(message)


def error_from_result(result: Any) -> AxonSegError | None:
    """The error a worker returned as its job's result (:func:`error_result`), or None for a real result."""
    if not isinstance(result, dict) or "error" not in result or "status_code" not in result:
        return None
    return error_from_status(int(result["status_code"]), str(result["error"]))


def check_model(model: str, models: Collection[str]) -> str:
    """``model`` when it is one of ``models`` (a mapping's keys count); NotFound naming those there are."""
    if model not in models:
        raise NotFound(f"unknown model '{model}'; available models: {', '.join(models)}")
    return model
