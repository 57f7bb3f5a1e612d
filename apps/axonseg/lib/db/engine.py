"""Where the database is and how to bring its schema up to date.

``DATABASE_URL`` (e.g. ``postgresql+psycopg://axonseg@postgres/axonseg``) wins; the embedded default is a
SQLite file in the work directory. Only the API server and the CLI migrate; workers just connect.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def database_url(workdir: str) -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{os.path.abspath(os.path.join(workdir, 'axonseg.db'))}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Several processes (API, workers) share the file: wait for locks instead of failing at once.
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    """Alembic's configuration for ``url`` (no alembic.ini: the migrations live in this package)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ini-style interpolation
    return config


def upgrade(url: str) -> None:
    """Apply every migration up to head (idempotent)."""
    command.upgrade(alembic_config(url), "head")
