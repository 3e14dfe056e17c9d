"""`imagepipe dev`'s secrets: made once per data dir, owner-only, reused, strong enough for
production rules; what the user set explicitly wins."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from imagepipe.config import Settings
from imagepipe.stack.credentials import SECRETS_FILE, dev_secrets, with_dev_secrets


def test_made_once_per_data_dir_readable_by_its_owner_only(tmp_path: Path) -> None:
    first = dev_secrets(tmp_path / "a")
    path = tmp_path / "a" / SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_secrets(tmp_path / "a") == first  # a restart reads the same ones
    assert json.loads(path.read_text()) == first
    other = dev_secrets(tmp_path / "b")
    assert not set(other.values()) & set(first.values())
    assert [p.name for p in (tmp_path / "a").iterdir()] == [SECRETS_FILE]  # no temp file left


def test_dev_settings_take_them_and_pass_production_rules(tmp_path: Path) -> None:
    settings = with_dev_secrets(Settings(environment="development", data_dir=tmp_path))
    made = dev_secrets(tmp_path)
    assert settings.callback_secret.get_secret_value() == made["callback_secret"]
    assert settings.s3_access_key_id == made["s3_access_key_id"]
    assert settings.s3_secret_access_key.get_secret_value() == made["s3_secret_access_key"]
    assert settings.weak_secrets() == []
    assert "," not in settings.s3_access_key_id + settings.s3_secret_access_key.get_secret_value()


def test_what_the_user_set_wins(tmp_path: Path) -> None:
    mine = Settings(environment="development", data_dir=tmp_path, callback_secret="mine")
    settings = with_dev_secrets(mine)
    assert settings.callback_secret.get_secret_value() == "mine"
    assert settings.s3_access_key_id == dev_secrets(tmp_path)["s3_access_key_id"]


@pytest.mark.parametrize("text", ["not json", "[]", '{"callback_secret": "x"}'])
def test_a_damaged_file_is_reported_not_replaced(tmp_path: Path, text: str) -> None:
    (tmp_path / SECRETS_FILE).write_text(text)
    with pytest.raises(RuntimeError, match="remove it"):
        dev_secrets(tmp_path)
    assert (tmp_path / SECRETS_FILE).read_text() == text


def test_a_file_an_older_release_made_gets_a_grant_secret_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    older = {
        "callback_secret": "c" * 43,
        "s3_access_key_id": "imagepipe-0123456789abcdef",
        "s3_secret_access_key": "s" * 43,
    }
    (tmp_path / SECRETS_FILE).write_text(json.dumps(older))
    found = dev_secrets(tmp_path)
    assert {name: found[name] for name in older} == older  # rclone's data keeps its keys
    assert len(found["grant_secret"]) >= 32
    assert dev_secrets(tmp_path) == found  # written down: the next start agrees
