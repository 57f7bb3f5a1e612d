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
