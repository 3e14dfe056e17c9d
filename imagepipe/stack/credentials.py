"""`imagepipe dev`'s secrets: made once per data dir, kept in `<data dir>/secrets.json` (0600).

No secret ships in the source: each data dir gets its own callback secret and key pair for
its embedded S3, and every later start reads them back, so roles, servers and any S3 client
the user set up keep agreeing across restarts. What the user sets explicitly wins.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from imagepipe.config import Settings

SECRETS_FILE = "secrets.json"
FIELDS = ("callback_secret", "grant_secret", "s3_access_key_id", "s3_secret_access_key")
ADDED_LATER = ("grant_secret",)  # a file an older release made gets these added, the rest kept


def new_secrets() -> dict[str, str]:
    """A fresh callback secret and S3 key pair (no commas: rclone splits its key pair at one)."""
    return {
        "callback_secret": secrets.token_urlsafe(32),
        "grant_secret": secrets.token_urlsafe(32),
        "s3_access_key_id": f"imagepipe-{secrets.token_hex(8)}",
        "s3_secret_access_key": secrets.token_urlsafe(32),
    }


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The data dir's secrets: read from its secrets file, which is made on the first call.

    Raises RuntimeError when the file exists but does not hold them.
    """
    path = data_dir / SECRETS_FILE
    if not path.exists():
        _create(path, new_secrets())
    found = _read(path)
    missing = [name for name in ADDED_LATER if not found.get(name)]
    whole = all(found.get(name) for name in FIELDS if name not in ADDED_LATER)
    if missing and whole:  # a damaged file is reported below, never rewritten
        fresh = new_secrets()
        _write(path, {**found, **{name: fresh[name] for name in missing}}, replace=True)
        found = _read(path)
    return _check(path, found)


def with_dev_secrets(settings: Settings) -> Settings:
    """These settings, with the data dir's secrets wherever the user set none."""
    found = dev_secrets(settings.data_dir.resolve())
    update: dict[str, object] = {
        name: value if name == "s3_access_key_id" else SecretStr(value)
        for name, value in found.items()
        if name not in settings.model_fields_set
    }
    return settings.model_copy(update=update)


def _create(path: Path, values: dict[str, str]) -> None:
    """Write the file; never over one another process made meanwhile."""
    _write(path, values, replace=False)


def _write(path: Path, values: dict[str, str], *, replace: bool) -> None:
    """Write the file, readable by its owner only, under a temporary name; then link (or,
    with ``replace``, rename) it into place: never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(values, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path) if replace else os.link(temp, path)
    except FileExistsError:
        pass  # another `imagepipe dev` made it first: its secrets are the ones
    finally:
        temp.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, str]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot read {path} ({exc}); remove it to make new secrets") from exc
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise RuntimeError(f"{path} is not a JSON object of strings; remove it to make new ones")
    return values


def _check(path: Path, values: dict[str, str]) -> dict[str, str]:
    if not all(values.get(name) for name in FIELDS):
        raise RuntimeError(f"{path} lacks one of {', '.join(FIELDS)}; remove it to make new ones")
    return {name: values[name] for name in FIELDS}
