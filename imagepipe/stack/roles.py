"""Each role's command line and environment: what `imagepipe dev` runs, and what the tests
and the benchmarks run the same way."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from imagepipe.config import Settings
from imagepipe.stack.net import local_host


def role_commands(host: str, port: int) -> dict[str, list[str]]:
    """The api, worker and replicator command lines, run by this same Python."""
    imagepipe = [sys.executable, "-m", "imagepipe"]
    return {
        "api": [*imagepipe, "api", "--host", host, "--port", str(port)],
        "worker": [*imagepipe, "worker"],
        # repairs from the audit run in their own lane, so they never starve new uploads
        "backfill": [*imagepipe, "worker", "--lane", "backfill", "--concurrency", "1"],
        "replicator": [*imagepipe, "replicator"],
    }


def role_env(
    settings: Settings,
    *,
    redis_url: str,
    backup_endpoint: str,
    port: int,
    host: str,
    base: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The environment of every role: the caller's, plus where the stack's servers are."""
    env = dict(base)
    env.update(
        IMAGEPIPE_REDIS_URL=redis_url,
        IMAGEPIPE_BACKUP_S3_ENDPOINT=backup_endpoint,
        IMAGEPIPE_DATA_DIR=str(settings.data_dir.resolve()),
        AWS_ACCESS_KEY_ID=settings.s3_access_key_id,
        AWS_SECRET_ACCESS_KEY=settings.s3_secret_access_key.get_secret_value(),
    )
    env.setdefault("IMAGEPIPE_CALLBACK_URL", f"http://{local_host(host)}:{port}/internal/callbacks")
    return env
