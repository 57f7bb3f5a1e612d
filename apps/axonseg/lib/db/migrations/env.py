"""Alembic environment: migrations run online against ``sqlalchemy.url`` (set by ``lib.db.engine.upgrade``)."""

from alembic import context

from lib.db.engine import make_engine
from lib.db.models import Base

config = context.config
engine = make_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    if connection.dialect.name == "sqlite":
        # SQLite's batch migrations copy a table and drop the old one; with foreign keys on, that drop
        # would cascade to the rows that refer to it (label history). Checked again after the migration.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration left rows that refer to missing rows: {broken[:5]}")
engine.dispose()
