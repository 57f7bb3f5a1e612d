"""What the database refuses, as the errors a client sees (a route may let them through unchanged)."""

from __future__ import annotations

from .. import errors


class NotFound(errors.NotFound):
    """A row the caller named is not recorded (404)."""


class AlreadyExists(errors.InvalidRequest):
    """A row with that key is recorded already (400: the client picks another id or deletes the first)."""
