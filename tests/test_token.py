"""`imagepipe token`: grants minted from the grant secret alone, which a real API accepts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imagepipe import cli
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.grants import KNOWN_SCOPES, READ, SCOPES, WRITE, verify
from imagepipe.stack.credentials import dev_secrets
from imagepipe.stack.tokens import parse_ttl
from tests import images
from tests.owners import GRANT_SECRET


def mint_here(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `imagepipe token ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main(["token", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def secret_in_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """IMAGEPIPE_GRANT_SECRET set, as on an api host; nothing else of production set."""
    for name in [n for n in os.environ if n.startswith(("IMAGEPIPE_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IMAGEPIPE_GRANT_SECRET", GRANT_SECRET)
    return GRANT_SECRET


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("24h", 86400), ("1d", 86400), ("45", 45)],
)
def test_ttls_read_like_people_write_them(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["25h", "2d", "0s", "-5m", "1x", "h", "1.5h", ""])
def test_ttls_past_a_day_or_unreadable_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ttl(text)


def test_a_grant_from_the_environment_s_secret_carries_every_claim_asked(
    secret_in_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.time()
    code, out, err = mint_here(
        capsys,
        *("--owner", "alice", "--scope", "photos:read", "--ttl", "15m"),
        *("--visibility", "public", "--max-bytes", "1000", "--uploads-per-minute", "6"),
        *("--bytes-per-day", "0", "--storage-bytes", "5000"),
    )
    assert code == 0, err
    grant = verify(out.strip(), [secret_in_env])  # stdout is the grant alone
    assert grant.owner == "alice" and grant.scopes == {READ}
    assert before + 900 - 5 <= grant.expires_at <= time.time() + 900 + 1
    assert grant.visibility == "public"
    assert grant.limits == {
        "max_bytes": 1000,
        "uploads_per_minute": 6,
        "bytes_per_day": 0,
        "storage_bytes": 5000,
    }
    assert "alice" in err and "photos:read" in err


def test_the_default_grant_writes_and_reads_but_does_not_delete(
    secret_in_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = mint_here(capsys, "--owner", "bob")
    grant = verify(out.strip(), [secret_in_env])
    assert code == 0 and grant.scopes == {WRITE, READ}
    assert grant.limits == {} and grant.visibility == "private"
    assert 3500 < grant.expires_at - time.time() <= 3600  # an hour unless asked


def test_a_local_stack_s_secret_is_read_from_its_data_dir(
    secret_in_env: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("IMAGEPIPE_GRANT_SECRET")
    made = dev_secrets(tmp_path)["grant_secret"]  # what `imagepipe dev` made there
    code, out, err = mint_here(capsys, "--owner", "local-user", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert verify(out.strip(), [made]).owner == "local-user"


@pytest.mark.parametrize(
    ("secret", "data_dir", "says"),
    [
        (None, None, "set IMAGEPIPE_GRANT_SECRET"),
        (None, "missing", "does not exist: run `imagepipe dev` there once"),
        ("too-short", None, "IMAGEPIPE_GRANT_SECRET has 9 characters, fewer than 32"),
        ("imagepipe-secret", None, "documented (public) value"),
    ],
)
def test_no_secret_or_a_weak_one_mints_nothing_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    secret: str | None,
    data_dir: str | None,
    says: str,
) -> None:
    monkeypatch.delenv("IMAGEPIPE_GRANT_SECRET", raising=False)
    if secret:
        monkeypatch.setenv("IMAGEPIPE_GRANT_SECRET", secret)
    where = ["--data-dir", str(tmp_path / data_dir)] if data_dir else []
    code, out, err = mint_here(capsys, "--owner", "alice", *where)
    assert code == 2 and out == ""
    assert says in err
    assert secret is None or secret not in err  # a refusal never prints the secret


@pytest.mark.parametrize(
    "argv",
    [
        ["--ttl", "25h"],
        ["--scope", "photos:wrte"],
        ["--scope", ""],
        ["--visibility", "friends"],
        ["--max-bytes", "-1"],
    ],
)
def test_bad_flags_are_usage_errors(
    secret_in_env: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", "--owner", "alice", *argv])
    assert exit_.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_an_owner_the_api_would_refuse_mints_nothing(
    secret_in_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = mint_here(capsys, "--owner", "x" * 129)
    assert code == 2 and out == "" and "1 to 128 characters" in err


def test_every_scope_can_be_asked_for(
    secret_in_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = mint_here(capsys, "--owner", "ops", "--scope", " ".join(KNOWN_SCOPES))
    assert code == 0 and verify(out.strip(), [secret_in_env]).scopes == set(KNOWN_SCOPES)
    assert "photos:admin" in KNOWN_SCOPES and "photos:admin" not in SCOPES  # asked for only


async def test_a_minted_grant_uploads_through_the_client_as_its_owner(
    api_url: str, catalog: PhotoCatalog, tmp_path: Path
) -> None:
    """The operator's path end to end, as processes: mint, export, upload (production API)."""
    env = {n: v for n, v in os.environ.items() if not n.startswith(("IMAGEPIPE_", "AWS_"))}
    env["IMAGEPIPE_GRANT_SECRET"] = GRANT_SECRET
    token = _run(env, "token", "--owner", "alice", "--ttl", "90s").stdout.strip()
    photo = tmp_path / "one.jpg"
    photo.write_bytes(images.jpeg(200, 150))
    env = {**env, "IMAGEPIPE_SERVER": api_url, "IMAGEPIPE_TOKEN": token}
    del env["IMAGEPIPE_GRANT_SECRET"]
    done = _run(env, "upload", "--json", "--no-wait", str(photo))
    row = json.loads(done.stdout)["files"][0]
    assert row["status"] == "queued", done.stderr
    found = await catalog.photo(row["photo_id"])
    assert found is not None and found["owner"] == "alice"
    async with httpx.AsyncClient(base_url=api_url) as http:  # polls need no grant
        assert (await http.get(f"/tickets/{row['ticket_id']}")).status_code == 200


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagepipe.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
