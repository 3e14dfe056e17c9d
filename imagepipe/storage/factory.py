"""Build the configured stores from Settings (the CLI and app lifespans call these)."""

from __future__ import annotations

from imagepipe.config import Settings
from imagepipe.storage.base import Storage
from imagepipe.storage.filesystem import FilesystemStorage
from imagepipe.storage.partial import FilesystemPartials, PartialUploads, S3Partials
from imagepipe.storage.s3 import S3Storage


def primary_storage(settings: Settings) -> Storage:
    """The primary store: an S3 bucket when one is configured, else the local filesystem."""
    if settings.primary_s3_bucket is not None:
        # shared by every machine, so api and workers need no common disk
        return _s3(
            settings,
            settings.primary_s3_bucket,
            settings.primary_s3_endpoint,
            settings.primary_s3_region,
        )
    return FilesystemStorage(settings.primary_root)


def partial_uploads(settings: Settings, primary: Storage) -> PartialUploads:
    """Where resumable uploads gather their bytes: beside the primary store's objects."""
    if isinstance(primary, S3Storage):
        return S3Partials(primary)
    return FilesystemPartials(settings.primary_root)


def backup_storage(settings: Settings) -> S3Storage:
    """The backup store: a bucket on the S3 endpoint in ``settings.backup_s3_endpoint``."""
    if not settings.backup_s3_endpoint:
        raise ValueError(
            "IMAGEPIPE_BACKUP_S3_ENDPOINT is unset: `imagepipe dev` starts a local S3 and sets "
            "it; other roles need it configured"
        )
    return _s3(
        settings, settings.backup_s3_bucket, settings.backup_s3_endpoint, settings.backup_s3_region
    )


def _s3(settings: Settings, bucket: str, endpoint: str | None, region: str) -> S3Storage:
    """An S3Storage with the shared credentials and explicit connect/read timeouts."""
    return S3Storage(
        bucket=bucket,
        endpoint_url=endpoint,
        region=region,
        access_key=settings.s3_access_key_id,
        secret_key=settings.s3_secret_access_key.get_secret_value(),
        connect_timeout_ms=settings.s3_connect_timeout_ms,
        read_timeout_ms=settings.s3_read_timeout_ms,
    )
