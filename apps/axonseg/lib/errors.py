"""Errors a client can cause. Each carries the HTTP status the server answers with."""

from __future__ import annotations

from collections.abc import Collection


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


def error_from_status(status_code: int, message: str) -> AxonSegError:
    """Re-create an error a worker reported as a result (errors cross the queue as plain data)."""
    kinds = (InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, UploadTooLarge, UnsupportedMediaType)
    kinds += (VolumeError, Busy, InsufficientStorage, ServiceUnavailable, JobTimeout)
    for cls in kinds:
        if cls.status_code == status_code:
            return cls(message)
    return JobFailed(message)


def check_model(model: str, models: Collection[str]) -> str:
    """``model`` when it is one of ``models`` (a mapping's keys count); NotFound naming those there are."""
    if model not in models:
        raise NotFound(f"unknown model '{model}'; available models: {', '.join(models)}")
    return model
