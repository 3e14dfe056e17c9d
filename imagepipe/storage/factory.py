"""Build the configured stores from Settings (the CLI and app lifespans call these)."""

from __future__ import annotations

from imagepipe.config import Settings
from imagepipe.storage.base import Storage
from imagepipe.storage.filesystem import FilesystemStorage
from imagepipe.storage.s3 import S3Storage


def primary_storage(settings: Settings) -> Storage:
    """The primary store: the local filesystem under ``settings.primary_root``."""
    # An S3 primary (DESIGN.md: "Primary can be either") plugs in here: a setting such as
    # `primary_s3_endpoint`, and when it is set return an S3Storage built like the backup.
    return FilesystemStorage(settings.primary_root)


def backup_storage(settings: Settings) -> S3Storage:
    """The backup store: a bucket on the S3 endpoint in ``settings.backup_s3_endpoint``."""
    if not settings.backup_s3_endpoint:
        raise ValueError(
            "IMAGEPIPE_BACKUP_S3_ENDPOINT is unset: `imagepipe dev` starts a local S3 and sets "
            "it; other roles need it configured"
        )
    return S3Storage(
        bucket=settings.backup_s3_bucket,
        endpoint_url=settings.backup_s3_endpoint,
        region=settings.backup_s3_region,
        access_key=settings.s3_access_key_id,
        secret_key=settings.s3_secret_access_key.get_secret_value(),
        connect_timeout_ms=settings.s3_connect_timeout_ms,
        read_timeout_ms=settings.s3_read_timeout_ms,
    )
