"""The one rule for identifiers a client sends that can become a path or a log line.

Image (region) ids, label tags, structure and model names, user names, session ids and version numbers all
pass through here, at the API before anything is stored and again where a store joins them into a path
(:func:`safe_join`). A name is 1 to ``max_length`` characters from a bounded set: letters, digits and
``. _ -`` (``@`` too for user names), starting with a letter or digit, never ``..``. So no ``/``, ``\\``,
NUL, control characters or newlines can reach a path or a log line, and a name is never absolute.

Log lines quote what a client sent through :func:`log_safe`; :class:`EscapeControlCharacters` escapes the
rest at the log handlers, so a name with a newline can never forge a line of the server log.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from .errors import InvalidRequest
from .params import Range, shown

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
MAX_NAME_LENGTH = 128
MAX_USER_NAME_LENGTH = 64
# Version numbers are SQL integers: bounded so a 23-digit number is a 400, not a database overflow.
VERSION = Range(1, 2**31 - 1, integer=True)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_name(value: Any, what: str = "image id", max_length: int = MAX_NAME_LENGTH) -> str:
    """``value`` if it is a plain name (see the module docstring); else InvalidRequest naming ``what``."""
    if not isinstance(value, str) or len(value) > max_length or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidRequest(
            f"invalid {what} {shown(value)}: use 1-{max_length} letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (no path separators, '..', spaces or control characters)"
        )
    return value


def check_user_name(value: Any) -> str:
    """A user name: as :func:`check_name`, ``@`` allowed (e-mail-like names), at most 64 characters."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_USER_NAME_LENGTH
        or not _USER_NAME.fullmatch(value)
        or ".." in value
    ):
        raise InvalidRequest(
            f"user name {shown(value)} is not allowed: 1-{MAX_USER_NAME_LENGTH} letters, digits or . _ @ -, "
            "starting with a letter or digit"
        )
    return value


def check_version(value: Any, what: str = "version") -> int:
    """A version number: a whole number from 1 to 2**31 - 1."""
    return VERSION.check(what, value)


def same_name(a: str, b: str) -> bool:
    """Two names a person could confuse (``ADMIN`` and ``admin``): equal ignoring case."""
    return a.casefold() == b.casefold()


def safe_join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts``, each a checked name; raises if the result would leave ``root``.

    The second line of defence: the API has checked the same names before anything was stored.
    """
    for part in parts:
        check_name(part, "path component", 255)
    path = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise InvalidRequest(f"{shown(os.path.join(*parts))} would leave the server's folder")
    return path


def log_safe(value: Any, limit: int = 200) -> str:
    """``value`` for a log line: control characters escaped, cut at ``limit`` characters."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EscapeControlCharacters(logging.Filter):
    """A handler filter: each record's message becomes one line (its traceback is formatted apart)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = log_safe(message, limit=len(message) * 6), None
        return True


def escape_log_lines() -> None:
    """Install :class:`EscapeControlCharacters` on every handler configured now (idempotent)."""
    loggers = [logging.root] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
                handler.addFilter(EscapeControlCharacters())
