"""Alembic environment: migrations run online against ``sqlalchemy.url`` (set by ``lib.db.engine.upgrade``)."""

from alembic import context

from lib.db.engine import make_engine
from lib.db.models import Base

config = context.config
engine = make_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
