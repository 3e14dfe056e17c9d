"""The client's own settings: only what `imagepipe upload` reads from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


def default_state_file() -> Path:
    """Where resumable uploads' URLs are kept between runs: the per-user state folder
    (``$XDG_STATE_HOME``, else ``~/.local/state``), as the XDG base directories say."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "imagepipe" / "uploads.json"


class ClientSettings(BaseSettings):
    """``IMAGEPIPE_SERVER``: the API to talk to; ``IMAGEPIPE_TOKEN``: the grant to send;
    ``IMAGEPIPE_RESUMABLE_ABOVE_BYTES``: files larger than this go resumably (tus), in chunks of
    ``IMAGEPIPE_CHUNK_BYTES``, their upload URLs kept in ``IMAGEPIPE_UPLOAD_STATE``."""

    model_config = SettingsConfigDict(env_prefix="IMAGEPIPE_", extra="ignore")

    server: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None  # a grant from the web tier, or `imagepipe token`
    resumable_above_bytes: int = Field(default=8 * MIB, ge=0)
    chunk_bytes: int = Field(default=8 * MIB, ge=64 * 1024)
    upload_state: Path = Field(default_factory=default_state_file)
