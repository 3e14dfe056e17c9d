"""Alembic's entry point: runs the migrations on the connection `catalog.migrate` hands over.

`imagepipe migrate` is the only way in: it opens the connection, takes the advisory lock and
passes the connection here through ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

from imagepipe.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
