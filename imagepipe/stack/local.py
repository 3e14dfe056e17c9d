"""The embedded servers of a local stack, started together under one data dir.

`LocalServers(settings)` starts an embedded Valkey unless the settings name a Redis URL, an
embedded PostgreSQL unless they name a database, and an embedded backup S3 unless they name
an endpoint; its `settings` then point at what runs.
`imagepipe dev`, the fault tests and the benchmarks all start their servers this way.
"""

from __future__ import annotations

from typing import Any

from imagepipe.config import Settings
from imagepipe.stack.postgres import EmbeddedPostgres
from imagepipe.stack.servers import EmbeddedS3, EmbeddedValkey, Server


class LocalServers:
    """An embedded Valkey, PostgreSQL and backup S3, for whichever the settings leave unset."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        data_dir = settings.data_dir.resolve()
        self.valkey: EmbeddedValkey | None = None
        if not settings.redis_url:
            self.valkey = EmbeddedValkey(data_dir)
        self.postgres: EmbeddedPostgres | None = None
        if not settings.database_url:
            self.postgres = EmbeddedPostgres(data_dir)
        self.s3: EmbeddedS3 | None = None
        if not settings.backup_s3_endpoint:
            self.s3 = EmbeddedS3(
                data_dir,
                settings.backup_s3_bucket,
                settings.s3_access_key_id,
                settings.s3_secret_access_key.get_secret_value(),
            )

    @property
    def settings(self) -> Settings:
        """The settings given, pointed at the embedded servers."""
        update: dict[str, Any] = {}
        if self.valkey is not None:
            update["redis_url"] = self.valkey.url
        if self.postgres is not None:
            update["database_url"] = self.postgres.url
        if self.s3 is not None:
            update["backup_s3_endpoint"] = self.s3.url
        return self._settings.model_copy(update=update)

    @property
    def servers(self) -> list[Server]:
        """The embedded servers, in the order they start (they stop in reverse)."""
        return [s for s in (self.valkey, self.postgres, self.s3) if s is not None]

    def start(self) -> Settings:
        """Start Valkey, PostgreSQL, then S3; the settings that point at them.

        Raises RuntimeError (or OSError) when one cannot start; none is left running then.
        """
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self.settings

    def stop(self) -> None:
        """Stop S3, PostgreSQL, then Valkey; safe to call twice."""
        for server in reversed(self.servers):
            server.stop()
