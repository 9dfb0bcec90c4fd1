"""Alembic environment: always run through ``core.db.upgrade`` with a live connection."""
from alembic import context

import core.audit.models  # noqa: F401  (tables of the core, for autogenerate)
from core.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
