"""Errors a client can cause. Each carries the HTTP status the server answers with."""

from __future__ import annotations


class AxonSegError(Exception):
    """Base class: ``str(error)`` is shown to the user, ``status_code`` is the HTTP reply."""

    status_code = 400


class InvalidRequest(AxonSegError):
    status_code = 400


class NotFound(AxonSegError):
    status_code = 404


class UploadTooLarge(AxonSegError):
    status_code = 413


class VolumeError(AxonSegError, ValueError):
    """A file that cannot be used as a 3D volume (unreadable, wrong dimensions, empty, all-NaN)."""

    status_code = 422


class Busy(AxonSegError):
    """The work cannot be queued now (e.g. training already running and enqueue not asked for)."""

    status_code = 429


class JobFailed(AxonSegError):
    status_code = 500


class ServiceUnavailable(AxonSegError):
    """Redis or the workers are not there; nothing was submitted."""

    status_code = 503


class JobTimeout(AxonSegError):
    status_code = 504


def error_from_status(status_code: int, message: str) -> AxonSegError:
    """Re-create an error a worker reported as a result (errors cross the queue as plain data)."""
    for cls in (InvalidRequest, NotFound, UploadTooLarge, VolumeError, Busy, ServiceUnavailable, JobTimeout):
        if cls.status_code == status_code:
            return cls(message)
    return JobFailed(message)
