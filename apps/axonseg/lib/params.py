"""Checking request parameters against their bounds: the one way numbers, flags and choices of a request
are parsed. Each module that owns parameters declares their :class:`Range` next to where they are used
and documented; a value out of bounds or of the wrong type raises :class:`~lib.errors.InvalidRequest`
naming the parameter, what it may be and what was sent.

Numbers may come as JSON numbers or numeric strings (Slicer sends a model's options back as text);
booleans, lists, objects, NaN and infinities are refused where a number goes. A list goes where a list
is expected (a string is not split into characters), and a key a request's parser does not know is
refused by name (:func:`refuse_unknown`) rather than silently ignored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidRequest


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as a message quotes it, cut short (a request may send a megabyte where a number goes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high``, ends included unless ``low_open`` / ``high_open``; ``integer``:
    whole numbers only (3.0 is 3; 2.5 is refused, not rounded)."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        low, high = (str(v) if isinstance(v, int) else f"{v:g}" for v in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def contains(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def holds(self, array: np.ndarray) -> bool:
        """Whether every element of ``array`` is finite and inside the range (whole, with ``integer``)."""
        if array.size == 0:
            return True
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or (self.integer and np.any(array != np.round(array))):
                return False
        return bool(self.contains(array.min()) and self.contains(array.max()))

    def check(self, name: str, value: Any, where: str = "") -> Any:
        """``value`` as an int (``integer``) or float inside the range; ``where`` ends the message (e.g.
        " for 'bilateral' post-processing")."""
        kind = "an integer" if self.integer else "a number"
        error = InvalidRequest(f"{name} must be {kind} in {self}{where}, not {shown(value)}")
        x = _number(value)
        if x is None:
            raise error
        if self.integer:
            if x != int(x):
                raise error
            x = int(x)
        if not self.contains(x):
            raise error
        return x if self.integer else float(x)


# What one voxel of a label may hold (a label value or an object id): the label arrays are uint32. Saved labels,
# their segments' values (Slicer's label_info idx) and a trace request's anchors are all checked against it.
LABEL_VALUE = Range(0, 2**32 - 1, integer=True)


def _number(value: Any) -> int | float | None:
    """A finite int or float from a number or numeric string; None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)  # exact: 10**30 stays an int and fails the range check, never overflows
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, numbers.Real):
        x = float(value)
        return x if math.isfinite(x) else None
    return None


def boolean(name: str, value: Any, where: str = "") -> bool:
    """true/false, 1/0, or those as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise InvalidRequest(f"{name} must be true or false{where}, not {shown(value)}")


def one_of(name: str, value: Any, allowed: tuple[int, ...], where: str = "") -> int:
    """One of the integers ``allowed``."""
    x = _number(value)
    if x is None or x != int(x) or int(x) not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(map(str, allowed))}{where}, not {shown(value)}")
    return int(x)


def choice(name: str, value: Any, allowed: tuple[str, ...], where: str = "") -> str:
    """One of the words ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}{where}, not {shown(value)}")
    return value


def box(name: str, value: Any, axes: Range | tuple[Range, Range, Range], where: str = "") -> tuple[int, int, int]:
    """Three integers (z, y, x), each in ``axes`` (one range for all, or one per axis)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InvalidRequest(f"{name} must be three integers [z, y, x]{where}, not {shown(value)}")
    ranges = axes if isinstance(axes, tuple) else (axes, axes, axes)
    z, y, x = (int(r.check(f"{name}[{i}]", v, where)) for i, (r, v) in enumerate(zip(ranges, value)))
    return z, y, x


# Items a list parameter may hold (e.g. the image ids of a scoring or batch-infer request: a datastore holds
# fewer regions than this) and the characters of one string (an id, a path): beyond them it is no request.
MAX_LIST_ITEMS = 100_000
MAX_TEXT = 4096


def text(name: str, value: Any, where: str = "", max_length: int = MAX_TEXT) -> str:
    """A string of at most ``max_length`` characters (numbers, lists and null are refused)."""
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidRequest(f"{name} must be text of at most {max_length} characters{where}, not {shown(value)}")
    return value


def string_list(name: str, value: Any, where: str = "", max_items: int = MAX_LIST_ITEMS) -> list[str]:
    """A list of at most ``max_items`` strings (each as :func:`text`); a string is refused, not taken as a
    list of its characters."""
    if not isinstance(value, (list, tuple)) or len(value) > max_items:
        raise InvalidRequest(f"{name} must be a list of at most {max_items} strings{where}, not {shown(value)}")
    return [text(f"{name}[{i}]", item, where) for i, item in enumerate(value)]


def refuse_unknown(request: Mapping[str, Any], known: Collection[str], what: str, hint: str) -> None:
    """Refuse the keys of ``request`` that are not ``known``, naming them (a typo or another endpoint's option
    changes nothing the client can see, so it must not pass silently). ``what`` names a key (e.g. "training
    option"); ``hint`` ends the message with what is known."""
    unknown = [k for k in request if k not in known]
    if unknown:
        names = ", ".join(shown(k, 40) for k in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise InvalidRequest(f"unknown {what}(s) {names}{more}; {hint}")
