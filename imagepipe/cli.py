"""`imagepipe <role|audit|dev|upload|token|health>`: parse, build the settings once, dispatch.

Server commands get the one `Settings`; `upload` gets the client's own few settings, so the
client neither validates the server's configuration nor loads its libraries.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imagepipe import ids, keys

if TYPE_CHECKING:
    from imagepipe.config import Settings

DESCRIPTION = (
    "imagepipe: a photo pipeline. Uploads are stored and answered with a ticket at once; "
    "workers resize them, and a replicator copies every file to backup."
)


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.api.app import serve

    serve(settings, host=args.host or settings.host, port=args.port or settings.port)
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.worker.app import run_worker

    queue = keys.BACKFILL_QUEUE if args.lane == "backfill" else keys.UPLOADS_QUEUE
    if args.concurrency:
        settings = settings.model_copy(update={"worker_concurrency": args.concurrency})
    run_worker(settings, queue_name=queue, burst=args.burst)
    return 0


def _replicator(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.replication.replicator import run_replicator

    run_replicator(settings)
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.replication.report import run_audit

    return run_audit(settings, as_json=args.json, full=args.full)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.catalog.commands import run_migrate

    return run_migrate(settings)


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.catalog.commands import run_reindex

    return run_reindex(settings)


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.replication.commands import run_restore

    return run_restore(settings, only=args.photos)


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.stack.dev import run_dev

    return run_dev(settings, host=args.host or settings.host, port=args.port or settings.port)


def _upload(args: argparse.Namespace) -> int:
    from imagepipe.client.settings import ClientSettings
    from imagepipe.client.upload import Options, run_upload

    client = ClientSettings()
    token = args.token or (client.token.get_secret_value() if client.token else None)
    options = Options(
        server=args.server or client.server,
        token=token,
        concurrency=args.concurrency,
        wait=not args.no_wait,
        as_json=args.json,
        timeout_s=args.timeout,
        retries=args.retries,
        resumable_above=_given(args.resumable_above, client.resumable_above_bytes),
        chunk_bytes=_given(args.chunk_size, client.chunk_bytes),
        state_file=args.state_file or client.upload_state,
        # bars only for a person at a terminal: never in a log file or a --json pipe
        progress=not (args.json or args.quiet) and sys.stderr.isatty(),
    )
    return run_upload(args.paths, options)


def _token(args: argparse.Namespace) -> int:
    from imagepipe.stack.tokens import run_token

    return run_token(args)


def _health(settings: Settings, args: argparse.Namespace) -> int:
    from imagepipe.stack.healthcheck import run_health

    return run_health(settings, args.for_role)


def _add_client_commands(roles: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upload = roles.add_parser("upload", help="upload photos and wait for their tickets")
    upload.add_argument("paths", nargs="+", type=Path, help="image files and folders")
    upload.add_argument("--server", help="API base URL (IMAGEPIPE_SERVER)")
    upload.add_argument(
        "--token",
        help="the grant to send; prefer IMAGEPIPE_TOKEN: a token on a command line lands "
        "in shell history and in `ps` for every user of the machine",
    )
    upload.add_argument("-c", "--concurrency", type=_positive, default=4, help="uploads at once")
    upload.add_argument("--json", action="store_true", help="print one JSON document")
    upload.add_argument("--no-wait", action="store_true", help="stop once uploads are accepted")
    upload.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for tickets")
    upload.add_argument("--retries", type=int, default=5, help="retries per file on errors")
    upload.add_argument("--quiet", action="store_true", help="no progress bars")
    upload.add_argument(
        "--resumable-above",
        type=_bytes,
        help="files larger than this many bytes upload resumably, through tus "
        "(IMAGEPIPE_RESUMABLE_ABOVE_BYTES; default 8 MiB)",
    )
    upload.add_argument(
        "--chunk-size",
        type=_chunk,
        help="bytes per resumable PATCH (IMAGEPIPE_CHUNK_BYTES; default 8 MiB)",
    )
    upload.add_argument(
        "--state-file",
        type=Path,
        help="where resumable uploads' URLs are kept between runs (IMAGEPIPE_UPLOAD_STATE; "
        "default ~/.local/state/imagepipe/uploads.json)",
    )
    health = roles.add_parser("health", help="exit 0 when this role can work (healthchecks)")
    roles_checked = ("api", "worker", "replicator")
    health.add_argument("--role", dest="for_role", choices=roles_checked, default="api")


def _photo_id(text: str) -> str:
    if not ids.is_photo_id(text):
        raise argparse.ArgumentTypeError(f"not a photo id: {text!r}")
    return text


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _bytes(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _chunk(text: str) -> int:
    value = int(text)
    if value < 64 * 1024:
        raise argparse.ArgumentTypeError("must be at least 65536 bytes")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagepipe", description=DESCRIPTION)
    roles = parser.add_subparsers(dest="role", required=True)
    for name, helptext in (("api", "run the web tier"), ("dev", "run the whole local stack")):
        role = roles.add_parser(name, help=helptext)
        role.add_argument("--host", default=None, help="bind address (IMAGEPIPE_HOST)")
        role.add_argument("--port", type=int, default=None, help="port (IMAGEPIPE_PORT)")
    worker = roles.add_parser("worker", help="run an arq worker: resize, then call back")
    worker.add_argument("--lane", choices=("uploads", "backfill"), default="uploads")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="decode slots (IMAGEPIPE_WORKER_CONCURRENCY; default: cores)",
    )
    roles.add_parser("replicator", help="copy primary to backup S3, forever")
    audit = roles.add_parser("audit", help="check now that every upload finished and is backed up")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument(
        "--full", action="store_true", help="check every photo now (not only what changed)"
    )
    roles.add_parser("migrate", help="bring the catalog's schema up to this version")
    roles.add_parser("reindex", help="rebuild the catalog from the manifests in storage")
    restore = roles.add_parser(
        "restore", help="rebuild primary from backup (verified), then reindex the catalog"
    )
    restore.add_argument(
        "photos", nargs="*", type=_photo_id, help="photo ids to restore (default: every photo)"
    )
    _add_client_commands(roles)
    from imagepipe.stack.tokens import add_parser

    add_parser(roles)
    return parser


SERVER_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "api": _api,
    "worker": _worker,
    "replicator": _replicator,
    "dev": _dev,
    "audit": _audit,
    "migrate": _migrate,
    "reindex": _reindex,
    "restore": _restore,
    "health": _health,
}


# commands that build no server Settings: the client, and minting (the grant secret alone)
CLIENT_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "upload": _upload,
    "token": _token,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imagepipe` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.role in CLIENT_COMMANDS:
            return CLIENT_COMMANDS[args.role](args)
        return _serve(args)
    except KeyboardInterrupt:
        return 130


def _log_role(args: argparse.Namespace) -> str:
    """The role every log line names: a backfill worker says so, not just "worker"."""
    return "backfill" if getattr(args, "lane", None) == "backfill" else str(args.role)


def _serve(args: argparse.Namespace) -> int:
    """Build the server Settings once (refusing invalid ones), log, and run the command."""
    from pydantic import ValidationError

    from imagepipe.catalog.migrate import SchemaOutdated
    from imagepipe.config import Settings
    from imagepipe.connections import RedisConfigError
    from imagepipe.errors import CatalogUnavailable
    from imagepipe.logs import setup_logging

    try:
        # only `imagepipe dev` runs in development: it makes its own secrets for its roles
        settings = Settings(environment="development") if args.role == "dev" else Settings()
    except ValidationError as exc:
        print(f"imagepipe: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(settings, role=_log_role(args))
    try:
        return SERVER_COMMANDS[args.role](settings, args)
    # a Redis that may evict, a catalog on another schema or out of reach: refuse, plainly
    except (RedisConfigError, SchemaOutdated, CatalogUnavailable) as exc:
        print(f"imagepipe: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
