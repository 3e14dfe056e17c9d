"""Schema migrations: `imagepipe migrate` applies them, every role checks them at start.

Migrating is safe with several processes at once: each takes a PostgreSQL advisory lock
first, so one applies the scripts and the rest find nothing left to do. A role whose
database is behind (or ahead of) its code refuses to start, naming the command to run.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATION_LOCK = 0x696D6770  # any constant every imagepipe process agrees on ("imgp")


class SchemaOutdated(RuntimeError):
    """The catalog's schema is not the one this code was written for."""


def alembic_config() -> Config:
    """Alembic's configuration, from the scripts shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", "imagepipe.catalog:migrations")
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships no migration"
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def migrate(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply every pending migration under the advisory lock; (revision before, after)."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        try:
            before = await connection.run_sync(_current)
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            await connection.commit()
    return before, head_revision()


async def require_current_schema(engine: AsyncEngine) -> None:
    """Raise SchemaOutdated unless the database is at this code's revision."""
    found, wanted = await current_revision(engine), head_revision()
    if found != wanted:
        raise SchemaOutdated(
            f"the catalog's schema is at revision {found or 'none'}, this imagepipe needs "
            f"{wanted}: run `imagepipe migrate` (with the same IMAGEPIPE_DATABASE_URL)"
        )
