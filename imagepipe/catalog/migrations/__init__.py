"""Alembic's migration scripts for the catalog (`imagepipe migrate` applies them)."""
