"""One Settings object for every role, read from ``IMAGEPIPE_*`` (and ``AWS_*``) once.

The CLI builds it and passes it down; tests build their own. Nothing reads the
environment at import time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagepipe.formats import OUTPUT_FORMATS
from imagepipe.imaging.codecs import can_decode, can_encode, decodable_formats

MIN_CALLBACK_SECRET_CHARS = 32
# values older releases documented or defaulted to: public, so refused in production
DOCUMENTED_SECRETS = frozenset(
    {"dev-only-callback-secret-change-me", "imagepipe", "imagepipe-secret"}
)
GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
DEFAULT_SIZES = "sq:75:crop,t:100,s:240,m:500,l:1024,xl:2048"
_SIZE_NAME = re.compile(r"^[a-z0-9]{1,8}$")
_ORIGIN = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")


def _output_formats(text: str) -> tuple[str, ...]:
    """``jpeg+webp`` (or ``jpeg,webp``) -> ("JPEG", "WEBP"), checked against the encoders."""
    names = tuple(dict.fromkeys(f.strip().upper() for f in re.split(r"[+,]", text) if f.strip()))
    for name in names:
        if name not in OUTPUT_FORMATS:
            raise ValueError(f"output format {name!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        if not can_encode(name):
            raise ValueError(f"this Pillow build cannot encode {name}")
    return names


def _weakness(name: str, secret: SecretStr, least: int = 1) -> str | None:
    """Why production refuses this secret (under ``least`` characters, or public), or None."""
    value = secret.get_secret_value()
    if not value:
        return f"{name} is not set"
    if value in DOCUMENTED_SECRETS:
        return f"{name} is a documented (public) value"
    if len(value) < least:
        return f"{name} has {len(value)} characters, fewer than {least}"
    return None


def _origins(values: list[str]) -> tuple[str, ...]:
    """``https://www.example.com,http://127.0.0.1:8080``: origins alone (no path, no ``*``)."""
    origins = tuple(v.strip().rstrip("/") for v in values if v.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(f"{origin!r} is not an origin like https://www.example.com[:port]")
    return origins


def grant_secret_weakness(secret: str) -> str | None:
    """Why production refuses this grant secret, or None (`imagepipe token` checks it alone)."""
    return _weakness("IMAGEPIPE_GRANT_SECRET", SecretStr(secret), MIN_CALLBACK_SECRET_CHARS)


def _rotating(current: SecretStr, previous: SecretStr | None) -> list[str]:
    """A secret and, during a rotation, the one before it: the values to accept, current first."""
    values = [current.get_secret_value()]
    if previous is not None:
        values.append(previous.get_secret_value())
    return values


class SizeSpec(BaseModel, frozen=True):
    """One rung of the derivative ladder: long edge in pixels, or a centred square crop.

    ``formats``: what the rung is written as, the first one served to clients that name
    none of them; empty until Settings fills in its ``output_formats``.
    """

    name: str
    edge: int = Field(gt=0, le=8192)
    crop: bool = False
    formats: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SizeSpec:
        """Parse ``name:edge[:crop][:format+format...]``, e.g. ``l:1024:jpeg+webp``."""
        name, _, rest = text.strip().partition(":")
        edge, *options = rest.split(":")
        crop = bool(options) and options[0] == "crop"
        formats = options[1:] if crop else options
        if not (edge.isascii() and edge.isdigit()) or len(formats) > 1:
            raise ValueError(f"size {text!r} is not name:edge[:crop][:format+format]")
        if not _SIZE_NAME.match(name):
            raise ValueError(f"size name {name!r} must be 1-8 lowercase letters or digits")
        output = _output_formats(formats[0]) if formats else ()
        return cls(name=name, edge=int(edge), crop=crop, formats=output)

    @property
    def encodings(self) -> tuple[str, ...]:
        """The formats this rung is written in: JPEG where none were named or filled in."""
        return self.formats or ("JPEG",)

    def with_default_formats(self, formats: tuple[str, ...]) -> SizeSpec:
        """This rung, written as ``formats`` unless it names its own."""
        return self if self.formats else self.model_copy(update={"formats": formats})


def parse_sizes(text: str) -> tuple[SizeSpec, ...]:
    """Parse a comma-separated ladder, largest first, with unique names."""
    sizes = sorted(
        (SizeSpec.parse(p) for p in text.split(",") if p.strip()),
        key=lambda s: s.edge,
        reverse=True,
    )
    if not sizes:
        raise ValueError("the size ladder is empty")
    if len({s.name for s in sizes}) != len(sizes):
        raise ValueError("size names must be unique")
    return tuple(sizes)


class Settings(BaseSettings):
    """Every knob of every role. Env names are ``IMAGEPIPE_<FIELD>`` unless aliased."""

    # hide_input_in_errors: a refusal must not print the secrets it was given
    model_config = SettingsConfigDict(
        env_prefix="IMAGEPIPE_", extra="ignore", hide_input_in_errors=True
    )

    # production (the default) refuses weak secrets; only `imagepipe dev` runs in development
    environment: Literal["development", "production"] = "production"
    data_dir: Path = Path("storage")
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics_port: int = Field(default=0, ge=0)  # worker/replicator /metrics port; 0 = off
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 only where a scraper on another host needs it
    # web tiers whose pages may frame the upload page and hand it a grant (postMessage)
    page_embed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # the page sends files larger than this resumably (tus, /uploads/), in PATCHes this large
    page_resumable_above_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    page_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    loop_stall_ms: int = Field(default=10, ge=0)  # log event-loop stalls past this; 0 = off
    stop_grace_s: float = Field(default=10.0, gt=0)  # a stopping role exits after this anyway

    # -- Redis / Valkey ------------------------------------------------------------
    redis_url: str | None = None  # unset: `imagepipe dev` starts the embedded Valkey
    redis_max_connections: int = Field(default=64, gt=0)
    redis_connect_timeout_ms: int = Field(default=2000, gt=0)
    # the read timeout of every command; above the replicator's 1 s XREADGROUP block, or
    # every idle claim would end in a timeout
    redis_timeout_ms: int = Field(default=5000, ge=1500)

    # -- the catalog (PostgreSQL) -----------------------------------------------------
    database_url: str | None = None  # unset: `imagepipe dev` starts the embedded PostgreSQL
    database_pool_size: int = Field(default=10, gt=0)  # connections per process, at most
    database_connect_timeout_ms: int = Field(default=3000, gt=0)
    database_statement_timeout_ms: int = Field(default=5000, gt=0)

    # -- storage -------------------------------------------------------------------
    primary_dir: Path | None = None  # default: <data_dir>/primary
    # a bucket makes primary S3 (shared by machines); unset endpoint = AWS's own
    primary_s3_bucket: str | None = None
    primary_s3_endpoint: str | None = None
    primary_s3_region: str = "us-east-1"
    backup_s3_endpoint: str | None = None  # unset: `imagepipe dev` starts `rclone serve s3`
    backup_s3_bucket: str = "imagepipe-backup"
    backup_s3_region: str = "us-east-1"
    # no defaults: production refuses empty ones; `imagepipe dev` makes its own
    s3_access_key_id: str = Field(default="", validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    s3_secret_access_key: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    s3_connect_timeout_ms: int = Field(default=3000, gt=0)
    s3_read_timeout_ms: int = Field(default=30000, gt=0)

    # -- uploads -------------------------------------------------------------------
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)  # silent mid-body this long: 408
    upload_deadline_s: float = Field(default=600.0, gt=0)  # a body not done by then (trickled): 408
    # per api process; past these a request gets 503 + Retry-After
    max_concurrent_uploads: int = Field(default=64, gt=0)
    max_event_streams: int = Field(default=1000, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    formats: Annotated[tuple[str, ...], NoDecode] = Field(default_factory=decodable_formats)
    max_queue_depth: int = Field(default=10_000, gt=0)  # shed load past this many queued jobs
    min_free_disk_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    ticket_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    idempotency_retention_s: int = Field(default=24 * 3600, gt=0)
    idempotency_lease_s: int = Field(default=120, gt=0)  # an in-flight key frees itself after

    # -- resumable uploads (tus, `api.resumable`) ------------------------------------------
    resumable_ttl_s: int = Field(default=24 * 3600, gt=0)  # an unfinished upload expires after
    resumable_max_per_owner: int = Field(default=16, gt=0)  # unfinished uploads an owner may hold
    # a PATCH's bytes are made durable and acknowledged (offset) at least this often
    resumable_checkpoint_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)

    # -- processing ----------------------------------------------------------------
    sizes: Annotated[tuple[SizeSpec, ...], NoDecode] = parse_sizes(DEFAULT_SIZES)
    # the formats of every size that names none; a size names its own as `l:1024:jpeg+avif`
    output_formats: Annotated[tuple[str, ...], NoDecode] = ("JPEG",)
    jpeg_quality: int = Field(default=85, ge=1, le=95)
    webp_quality: int = Field(default=82, ge=1, le=100)
    avif_quality: int = Field(default=60, ge=1, le=100)
    worker_concurrency: int = Field(default=0, ge=0)  # 0 = one per core
    decode_memory_mb: int = Field(default=1024, gt=0)
    decode_timeout_s: float = Field(default=30.0, gt=0)
    # arq's lease on a running job is this + 10 s: a killed worker's job re-runs after that
    job_timeout_s: float = Field(default=60.0, gt=0)
    job_max_tries: int = Field(default=5, gt=0)

    # -- callbacks -----------------------------------------------------------------
    callback_url: str = "http://127.0.0.1:8000/internal/callbacks"
    callback_secret: SecretStr = SecretStr("")  # production: at least 32 characters
    callback_previous_secret: SecretStr | None = None  # still accepted during rotation
    # a port: /internal/callbacks is served only on this listener (keep it on a private
    # network), no longer on the public port; 0 = on the public port (`imagepipe dev`)
    callback_host: str = "127.0.0.1"
    callback_port: int = Field(default=0, ge=0, le=65535)
    callback_connect_timeout_ms: int = Field(default=3000, gt=0)
    callback_timeout_ms: int = Field(default=5000, gt=0)  # read (and write) timeout
    callback_max_tries: int = Field(default=30, gt=0)
    callback_backoff_cap_s: float = Field(default=30.0, gt=0)

    # -- owners and access (`imagepipe.grants`) ---------------------------------------
    # the HMAC key of grants (JWT HS256) the web tier mints; production: at least 32 characters
    grant_secret: SecretStr = SecretStr("")
    grant_previous_secret: SecretStr | None = None  # still accepted during rotation
    signed_url_ttl_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)  # private derivatives
    # how long shared caches may keep a public photo's size: a deleted (or made private)
    # photo can be served from a CDN or proxy for this long at most (revalidation is cheap:
    # every answer has an ETag)
    public_max_age_s: int = Field(default=3600, gt=0, le=365 * 24 * 3600)

    # -- deletion (`replication.deletion`) ----------------------------------------------
    # a deleted photo stays in the trash this long (hidden; its owner may undo) before its
    # objects are removed; 0 = removed at once
    trash_s: int = Field(default=0, ge=0)
    # how often a replicator empties the trash that is due and advances account deletions
    deletion_sweep_s: float = Field(default=2.0, gt=0)
    owner_deletion_rate: float = Field(default=20.0, gt=0)  # photos/s of an account's deletion

    # -- fair use, per owner (`api.fairuse`); a grant's claim of the same name overrides ------
    # 0 = unlimited. Uploads: a burst of this many, refilling evenly over the minute (GCRA)
    owner_uploads_per_minute: int = Field(default=600, ge=0)
    owner_bytes_per_day: int = Field(default=10 * 1024**3, ge=0)  # request bytes, rolling day
    # originals and derivatives; unlimited by default: what a plan holds is the web tier's call
    owner_storage_bytes: int = Field(default=0, ge=0)

    # -- audit ---------------------------------------------------------------------
    audit_interval_s: float = Field(default=300.0, gt=0)  # the replicator's periodic pass
    audit_stuck_after_s: float = Field(default=600.0, gt=0)  # a ticket idle this long is stuck
    audit_deep: bool = False  # also read both copies and compare sha256 (slow)
    # every photo is checked against primary and backup once within this period, a slice of
    # the library per pass (the rest of a pass costs what changed)
    audit_verify_period_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # -- replication ---------------------------------------------------------------
    replication_concurrency: int = Field(default=8, gt=0)
    replication_claim_idle_ms: int = Field(default=60_000, gt=0)
    # a retry waits at most this long; a copy that succeeds after failing wakes all the rest
    replication_backoff_cap_s: float = Field(default=10.0, gt=0)

    @field_validator("sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        return parse_sizes(value) if isinstance(value, str) else value

    @field_validator("formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(f.strip().upper() for f in value.split(",") if f.strip())
        return value

    @field_validator("callback_previous_secret", "grant_previous_secret", mode="before")
    @classmethod
    def _empty_previous_secret_is_none(cls, value: object) -> object:
        # an empty one would make signatures with an empty key valid
        empty = value == "" or (isinstance(value, SecretStr) and not value.get_secret_value())
        return None if empty else value

    @field_validator("page_embed_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _origins(value.split(",")) if isinstance(value, str) else value

    @field_validator("output_formats", mode="before")
    @classmethod
    def _parse_output_formats(cls, value: object) -> object:
        return _output_formats(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _every_size_has_formats(self) -> Settings:
        if not self.output_formats:
            raise ValueError("IMAGEPIPE_OUTPUT_FORMATS is empty")
        self.sizes = tuple(s.with_default_formats(self.output_formats) for s in self.sizes)
        return self

    @model_validator(mode="after")
    def _formats_can_be_decoded(self) -> Settings:
        missing = {f for f in self.formats if not can_decode(f)}
        if missing:
            raise ValueError(
                f"IMAGEPIPE_FORMATS names {', '.join(sorted(missing))}, which this installation "
                "cannot decode (HEIF needs `pip install 'imagepipe[heif]'`)"
            )
        return self

    @model_validator(mode="after")
    def _decode_fits_in_the_job(self) -> Settings:
        if self.decode_timeout_s >= self.job_timeout_s:
            raise ValueError("IMAGEPIPE_DECODE_TIMEOUT_S must be below IMAGEPIPE_JOB_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> Settings:
        weak = self.weak_secrets() if self.environment == "production" else []
        if weak:
            raise ValueError(
                f"production refuses weak secrets: {'; '.join(weak)} (make a secret with "
                f"`{GENERATE_HINT}`; for a local stack, `imagepipe dev` makes its own)"
            )
        return self

    @model_validator(mode="after")
    def _primary_s3_needs_its_own_bucket(self) -> Settings:
        if self.primary_s3_endpoint and not self.primary_s3_bucket:
            raise ValueError("IMAGEPIPE_PRIMARY_S3_ENDPOINT needs IMAGEPIPE_PRIMARY_S3_BUCKET")
        same_place = self.primary_s3_endpoint == self.backup_s3_endpoint
        if same_place and self.primary_s3_bucket == self.backup_s3_bucket:
            raise ValueError("the primary and backup buckets must differ: a copy onto itself")
        return self

    @property
    def qualities(self) -> dict[str, int]:
        """The encoder quality of each output format."""
        return {"JPEG": self.jpeg_quality, "WEBP": self.webp_quality, "AVIF": self.avif_quality}

    @property
    def primary_is_s3(self) -> bool:
        """Whether primary storage is an S3 bucket rather than a local folder."""
        return self.primary_s3_bucket is not None

    @property
    def primary_root(self) -> Path:
        """Folder of the filesystem primary store."""
        return self.primary_dir or self.data_dir / "primary"

    @property
    def callback_secrets(self) -> list[str]:
        """Secrets whose signatures the web tier accepts, current first."""
        return _rotating(self.callback_secret, self.callback_previous_secret)

    @property
    def grant_secrets(self) -> list[str]:
        """Secrets whose grants the API accepts, current first."""
        return _rotating(self.grant_secret, self.grant_previous_secret)

    def weak_secrets(self) -> list[str]:
        """What production refuses here: an empty, short or documented secret, each named."""
        least = MIN_CALLBACK_SECRET_CHARS
        checks = [
            _weakness("IMAGEPIPE_CALLBACK_SECRET", self.callback_secret, least),
            _weakness("AWS_ACCESS_KEY_ID", SecretStr(self.s3_access_key_id)),
            _weakness("AWS_SECRET_ACCESS_KEY", self.s3_secret_access_key),
        ]
        checks.append(_weakness("IMAGEPIPE_GRANT_SECRET", self.grant_secret, least))
        if self.callback_previous_secret is not None:
            previous = self.callback_previous_secret
            checks.append(_weakness("IMAGEPIPE_CALLBACK_PREVIOUS_SECRET", previous, least))
        if self.grant_previous_secret is not None:
            previous = self.grant_previous_secret
            checks.append(_weakness("IMAGEPIPE_GRANT_PREVIOUS_SECRET", previous, least))
        return [weakness for weakness in checks if weakness]

    def size(self, name: str) -> SizeSpec | None:
        """The configured size called ``name``, if any."""
        return next((s for s in self.sizes if s.name == name), None)
