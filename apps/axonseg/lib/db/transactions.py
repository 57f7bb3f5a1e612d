"""Sessions and the two rules every read-modify-write transaction follows (lock first, retry when locked)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Result, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .engine import make_engine

T = TypeVar("T")


def rows_changed(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (SQLAlchemy types ``Session.execute`` as a plain ``Result`` for every
    statement; for these it is a ``CursorResult``)."""
    return cast(CursorResult[Any], result).rowcount


def lock_for_write(session: Session) -> None:
    """Make a read-modify-write transaction exclusive: PostgreSQL locks the rows read ``FOR UPDATE``; SQLite
    (whose driver starts transactions only at the first write, after the read) takes its write lock now."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


def retry_when_locked(operation: Callable[[], T], attempts: int = 100) -> T:
    """Run a read-modify-write transaction again when SQLite refuses it because another process wrote
    first (PostgreSQL waits on the row lock instead)."""
    for attempt in range(attempts):
        try:
            return operation()
        except OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
    raise AssertionError("unreachable: the last attempt returns or raises")


class Sessions:
    """The engine and its sessions; the record classes (images, labels, users) share one through ``Database``."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        self.engine.dispose()
