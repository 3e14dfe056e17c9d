"""The embedded Valkey and S3 servers are real and keep their data across restarts."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from redis import Redis

from imagepipe.config import Settings
from imagepipe.stack.local import LocalServers
from imagepipe.stack.servers import EmbeddedS3, EmbeddedValkey
from tests.conftest import CALLBACK_SECRET, SECRETS
from tests.owners import GRANT_SECRET

ACCESS, SECRET = "embedded-key", "embedded-secret"
BODY = b"an original, byte for byte"


def s3_client(endpoint: str, secret: str = SECRET) -> Any:
    """A boto3 client set up the way imagepipe talks to S3."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def test_valkey_aof_survives_restart(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.url.startswith("redis://127.0.0.1:")
        with Redis.from_url(valkey.url) as client:
            client.set("ticket:1", "queued")
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert (tmp_path / "valkey" / "appendonlydir").is_dir()
    with EmbeddedValkey(tmp_path) as valkey, Redis.from_url(valkey.url) as client:
        assert client.get("ticket:1") == b"queued"


def test_valkey_outlives_a_ctrl_c_meant_for_the_roles(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.pid is not None
        os.kill(valkey.pid, signal.SIGINT)
        time.sleep(0.3)
        with Redis.from_url(valkey.url) as client:
            assert client.ping()


def test_valkey_stop_is_idempotent(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    valkey.start()
    valkey.stop()
    valkey.stop()
    assert valkey.pid is None


def test_s3_roundtrip_lands_on_disk(tmp_path: Path) -> None:
    key = "originals/ab/photo.jpg"
    with EmbeddedS3(tmp_path, "backup", ACCESS, SECRET) as s3:
        client = s3_client(s3.url)
        client.put_object(
            Bucket="backup",
            Key=key,
            Body=BODY,
            ContentMD5=content_md5(BODY),
            Metadata={"sha256": "abc123"},
        )
        assert client.get_object(Bucket="backup", Key=key)["Body"].read() == BODY
        head = client.head_object(Bucket="backup", Key=key)
        # rclone canonicalises metadata names like HTTP headers: sha256 -> Sha256
        assert {k.lower(): v for k, v in head["Metadata"].items()} == {"sha256": "abc123"}
        assert head["ETag"] == f'"{hashlib.md5(BODY, usedforsecurity=False).hexdigest()}"'
        listing = client.list_objects_v2(Bucket="backup", Prefix="originals/")
        assert [o["Key"] for o in listing["Contents"]] == [key]
    assert (tmp_path / "backup" / "backup" / "originals" / "ab" / "photo.jpg").read_bytes() == BODY


def test_s3_refuses_a_wrong_digest_and_a_wrong_secret(tmp_path: Path) -> None:
    with EmbeddedS3(tmp_path, "backup", ACCESS, SECRET) as s3:
        with pytest.raises(ClientError, match="BadDigest"):
            s3_client(s3.url).put_object(
                Bucket="backup", Key="k", Body=BODY, ContentMD5=content_md5(b"other")
            )
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            s3_client(s3.url, secret="wrong-secret").list_objects_v2(Bucket="backup")
    assert not (tmp_path / "backup" / "backup" / "k").exists()


def test_s3_keeps_its_key_pair_off_the_command_line(tmp_path: Path) -> None:
    secret = 'a "quoted" secret'  # the key pair travels CSV-quoted in RCLONE_AUTH_KEY
    with EmbeddedS3(tmp_path, "backup", ACCESS, secret) as s3:
        argv = Path(f"/proc/{s3.pid}/cmdline").read_bytes()  # what `ps` shows anyone
        assert b"rclone" in argv and b"serve" in argv
        assert ACCESS.encode() not in argv and b"quoted" not in argv
        assert "Contents" not in s3_client(s3.url, secret=secret).list_objects_v2(Bucket="backup")
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            s3_client(s3.url, secret="wrong-secret").list_objects_v2(Bucket="backup")


def test_s3_objects_survive_restart(tmp_path: Path) -> None:
    with EmbeddedS3(tmp_path, "backup", ACCESS, SECRET) as s3:
        s3_client(s3.url).put_object(Bucket="backup", Key="a/b.jpg", Body=BODY)
    with EmbeddedS3(tmp_path, "backup", ACCESS, SECRET) as s3:
        client = s3_client(s3.url)
        assert client.get_object(Bucket="backup", Key="a/b.jpg")["Body"].read() == BODY
        # user metadata is kept in rclone's memory only; the object and its ETag persist
        assert client.head_object(Bucket="backup", Key="a/b.jpg")["ContentLength"] == len(BODY)


def test_s3_reports_an_early_exit_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = EmbeddedS3(tmp_path, "backup", ACCESS, SECRET)
    command = s3._command
    monkeypatch.setattr(s3, "_command", lambda config: [*command(config), "--no-such-flag"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with \d+:.*unknown flag: --no-such-flag"):
        s3.start()
    assert s3.pid is None


def test_s3_refuses_a_port_in_use(tmp_path: Path) -> None:
    with EmbeddedS3(tmp_path, "backup", ACCESS, SECRET) as first:
        clash = EmbeddedS3(tmp_path, "backup", ACCESS, SECRET, port=first.port)
        with pytest.raises(RuntimeError, match="already in use"):
            clash.start()


def test_s3_refuses_access_keys_rclone_would_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        EmbeddedS3(tmp_path, "backup", "ak", SECRET)


def test_local_servers_start_both_and_point_the_settings_at_them(tmp_path: Path) -> None:
    base = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "redis_url": None,
            "backup_s3_endpoint": None,
            "callback_secret": CALLBACK_SECRET,
            "grant_secret": GRANT_SECRET,
            "AWS_ACCESS_KEY_ID": ACCESS,
            "AWS_SECRET_ACCESS_KEY": SECRET,
        }
    )
    servers = LocalServers(base)
    settings = servers.start()
    try:
        assert servers.valkey is not None and servers.s3 is not None
        assert settings.redis_url == servers.valkey.url
        assert settings.backup_s3_endpoint == servers.s3.url
        with Redis.from_url(str(settings.redis_url)) as client:
            assert client.ping()
        assert (
            s3_client(servers.s3.url).list_buckets()["Buckets"][0]["Name"] == base.backup_s3_bucket
        )
    finally:
        servers.stop()
    assert servers.valkey.pid is None and servers.s3.pid is None


def test_local_servers_leave_configured_servers_alone(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://elsewhere:1/0",
        database_url="postgresql://someone@elsewhere/catalog",
        backup_s3_endpoint="http://b:2",
        **SECRETS,
    )
    servers = LocalServers(settings)
    assert servers.valkey is None and servers.postgres is None and servers.s3 is None
    assert servers.start() == settings
