"""Alembic environment: runs on the connection :mod:`server.db` hands it (never reads a URL itself)."""

from __future__ import annotations

from alembic import context

from server.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by running the alembic CLI by hand
    raise RuntimeError("run migrations through `arte-server init` (server.db.upgrade)")

context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
