"""Alembic environment: always run through ``core.db.upgrade`` with a live connection."""
from alembic import context

import core.audit.models  # noqa: F401  (the core's tables, for autogenerate)
import core.identity.models  # noqa: F401
import core.notify  # noqa: F401
import core.studies.models  # noqa: F401
import core.studies.exports.models  # noqa: F401
import core.sharing.models  # noqa: F401
from core.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
