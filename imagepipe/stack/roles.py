"""Each role's command line and environment: what `imagepipe dev` runs, and what the tests
and the benchmarks run the same way.

`role_env` is the one place that turns a `Settings` back into the variables a role reads:
whoever starts roles builds the settings they share and passes them here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from pydantic import SecretStr

from imagepipe.config import Settings


def role_argv(role: str, *args: str) -> list[str]:
    """The command line of `imagepipe ROLE ARGS...`, run by this same Python."""
    return [sys.executable, "-m", "imagepipe", role, *args]


def role_commands(host: str, port: int) -> dict[str, list[str]]:
    """The api, worker, backfill worker and replicator command lines of `imagepipe dev`."""
    return {
        "api": role_argv("api", "--host", host, "--port", str(port)),
        "worker": role_argv("worker"),
        # repairs from the audit run in their own lane, so they never starve new uploads
        "backfill": role_argv("worker", "--lane", "backfill", "--concurrency", "1"),
        "replicator": role_argv("replicator"),
    }


def migrate_catalog(settings: Settings, timeout_s: float = 120.0) -> None:
    """Run `imagepipe migrate` against the catalog these settings name, as an operator would.

    Raises RuntimeError with its output when it fails.
    """
    done = subprocess.run(
        role_argv("migrate"), env=role_env(settings), capture_output=True, timeout=timeout_s
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"`imagepipe migrate` failed ({done.returncode}):\n{output}")


def role_env(
    settings: Settings, base: Mapping[str, str] = os.environ, **overrides: str
) -> dict[str, str]:
    """The environment of a role: `base`, then where `settings` point, then `overrides`."""
    return {**base, **settings_env(settings), **overrides}


def settings_env(settings: Settings) -> dict[str, str]:
    """The IMAGEPIPE_* and AWS_* variables that make a role's Settings point where these do."""
    env = {
        "IMAGEPIPE_ENVIRONMENT": settings.environment,
        "IMAGEPIPE_DATA_DIR": str(settings.data_dir.resolve()),
        "IMAGEPIPE_BACKUP_S3_BUCKET": settings.backup_s3_bucket,
        "IMAGEPIPE_BACKUP_S3_REGION": settings.backup_s3_region,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "IMAGEPIPE_CALLBACK_URL": settings.callback_url,
        "IMAGEPIPE_CALLBACK_SECRET": settings.callback_secret.get_secret_value(),
        "IMAGEPIPE_GRANT_SECRET": settings.grant_secret.get_secret_value(),
    }
    optional = {
        "IMAGEPIPE_REDIS_URL": settings.redis_url,
        "IMAGEPIPE_DATABASE_URL": settings.database_url,
        "IMAGEPIPE_BACKUP_S3_ENDPOINT": settings.backup_s3_endpoint,
        "IMAGEPIPE_PRIMARY_DIR": settings.primary_dir and str(settings.primary_dir.resolve()),
        "IMAGEPIPE_PRIMARY_S3_BUCKET": settings.primary_s3_bucket,
        "IMAGEPIPE_PRIMARY_S3_ENDPOINT": settings.primary_s3_endpoint,
        "IMAGEPIPE_WORKER_CONCURRENCY": str(settings.worker_concurrency or ""),
        "IMAGEPIPE_CALLBACK_PORT": str(settings.callback_port or ""),
    }
    if settings.primary_s3_bucket:
        optional["IMAGEPIPE_PRIMARY_S3_REGION"] = settings.primary_s3_region
    if settings.callback_port:
        optional["IMAGEPIPE_CALLBACK_HOST"] = settings.callback_host
    for name in ("callback_previous_secret", "grant_previous_secret"):
        previous: SecretStr | None = getattr(settings, name)
        if previous is not None:
            optional[f"IMAGEPIPE_{name.upper()}"] = previous.get_secret_value()
    return env | {name: value for name, value in optional.items() if value}
