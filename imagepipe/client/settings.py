"""The client's own settings: only what `imagepipe upload` reads from the environment."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """``IMAGEPIPE_SERVER``: the API to talk to; ``IMAGEPIPE_TOKEN``: the grant to send."""

    model_config = SettingsConfigDict(env_prefix="IMAGEPIPE_", extra="ignore")

    server: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None  # a grant from the web tier, or `imagepipe token`
