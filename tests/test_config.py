"""Production rules, the default: no role starts on an empty, short or documented secret, and
a refusal names what is wrong without printing the secrets it was given."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from imagepipe.config import Settings
from imagepipe.stack.roles import role_argv, role_env
from tests.conftest import CALLBACK_SECRET, SECRETS

REPO = Path(__file__).resolve().parent.parent
OLD_DEV_SECRET = "dev-only-callback-secret-change-me"  # once the documented default
WEAK_SECRETS = {"empty": "", "short": "s" * 31, "documented": OLD_DEV_SECRET}
WEAK: dict[str, dict[str, Any]] = {
    **{f"{name} callback secret": {"callback_secret": v} for name, v in WEAK_SECRETS.items()},
    "short previous secret": {"callback_previous_secret": "p" * 31},
    **{f"{name} grant secret": {"grant_secret": v} for name, v in WEAK_SECRETS.items()},
    "short previous grant secret": {"grant_previous_secret": "p" * 31},
    "documented previous secret": {"callback_previous_secret": OLD_DEV_SECRET},
    "documented S3 access key": {"AWS_ACCESS_KEY_ID": "imagepipe"},
    "documented S3 secret key": {"AWS_SECRET_ACCESS_KEY": "imagepipe-secret"},
    "no S3 key pair": {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
}


def test_production_is_the_default_and_refuses_no_secrets_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith(("IMAGEPIPE_", "AWS_"))]:
        monkeypatch.delenv(name)
    assert Settings.model_fields["environment"].default == "production"
    with pytest.raises(ValidationError) as refused:
        Settings()
    names = ("IMAGEPIPE_CALLBACK_SECRET", "IMAGEPIPE_GRANT_SECRET", "AWS_ACCESS_KEY_ID")
    for name in (*names, "AWS_SECRET_ACCESS_KEY"):
        assert f"{name} is not set" in str(refused.value)


@pytest.mark.parametrize("weak", WEAK.values(), ids=WEAK.keys())
def test_production_refuses_a_weak_secret(weak: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="production refuses weak secrets") as refused:
        Settings(**{**SECRETS, **weak})
    for value in weak.values():
        assert repr(value) not in str(refused.value)  # named, never printed
    Settings(**{**SECRETS, **weak}, environment="development")  # what `imagepipe dev` runs in


def test_strong_secrets_start() -> None:
    settings = Settings(**SECRETS, callback_previous_secret="p" * 32)
    assert settings.weak_secrets() == [] and len(CALLBACK_SECRET) >= 32
    assert settings.callback_secrets == [CALLBACK_SECRET, "p" * 32]


def test_an_empty_previous_secret_is_none_not_a_key_anyone_has() -> None:
    for environment in ("production", "development"):
        settings = Settings(**SECRETS, callback_previous_secret="", environment=environment)
        assert settings.callback_previous_secret is None
        assert settings.callback_secrets == [CALLBACK_SECRET]


def run_role(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`imagepipe ROLE` as a process; one that starts is stopped by the timeout (a failure)."""
    return subprocess.run(
        role_argv(role), cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("role", "weak"),
    [("api", {"IMAGEPIPE_CALLBACK_SECRET": OLD_DEV_SECRET}), ("worker", {})],
    ids=["api-old-dev-secret", "worker-no-secrets"],
)
def test_a_role_refuses_to_start_and_says_why(
    settings: Settings, role: str, weak: dict[str, str]
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEPIPE_", "AWS_"))}
    env = role_env(settings, base=base)
    if not weak:  # a role started by hand with none of the secrets
        env = {k: v for k, v in env.items() if "SECRET" not in k and "ACCESS_KEY" not in k}
    done = run_role(role, env | weak)
    assert done.returncode == 2, done.stderr
    assert "production refuses weak secrets" in done.stderr
    assert "IMAGEPIPE_CALLBACK_SECRET" in done.stderr and "imagepipe dev" in done.stderr
    assert OLD_DEV_SECRET not in done.stderr
