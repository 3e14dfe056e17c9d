"""The catalog: every photo and every stored object in PostgreSQL.

    schema      the tables, as SQLAlchemy Core
    engine      a bounded async engine from Settings (asyncpg, ms timeouts)
    migrations  Alembic's scripts; `migrate` applies them under an advisory lock and tells a
                role whose database is behind to run `imagepipe migrate`
    photos      PhotoCatalog: the queries the roles run (accept, index, gallery, backup state)

Storage stays the source of truth: every row can be rebuilt from the manifests on primary
(`imagepipe reindex`). Valkey keeps only what is in flight.
"""
