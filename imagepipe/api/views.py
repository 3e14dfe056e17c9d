"""The JSON shapes clients see: tickets and photos, with links and ETags."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response

from imagepipe.catalog.photos import GalleryRow
from imagepipe.models import BackupState, Derivative, PhotoManifest, Ticket
from imagepipe.replication.log import ReplicationLog


def iso(seconds: float) -> str:
    """RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")


def sizes_view(photo_id: str, sizes: dict[str, Derivative]) -> dict[str, Any]:
    """Each derivative's URL, dimensions, and the formats its URL negotiates between."""
    return {
        name: {
            "url": f"/photos/{photo_id}/{name}",
            "width": d.width,
            "height": d.height,
            "bytes": d.bytes,  # of the first (default) format
            "types": [f.content_type for f in d.files],
        }
        for name, d in sizes.items()
    }


def ticket_view(ticket: Ticket, backup: BackupState) -> dict[str, Any]:
    """The public ticket (internal fields such as storage keys stay inside)."""
    photo = (
        {
            "width": ticket.width,  # upright, once completed: the photo's own, not a size's
            "height": ticket.height,
            "sizes": sizes_view(ticket.photo_id, ticket.sizes),
        }
        if ticket.sizes
        else None
    )
    return {
        "id": ticket.id,
        "status": ticket.status.value,
        "photo_id": ticket.photo_id,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "attempts": ticket.attempts,
        "error": ticket.error,
        "photo": photo,
        "backup": backup.value,
        "version": ticket.version,
        "links": {
            "self": f"/tickets/{ticket.id}",
            "events": f"/tickets/{ticket.id}/events",
            "photo": f"/photos/{ticket.photo_id}",
        },
    }


async def ticket_json(replication: ReplicationLog, ticket: Ticket) -> dict[str, Any]:
    """The public ticket, with its photo's backup state read now."""
    return ticket_view(ticket, await replication.ticket_backup(ticket))


def photo_view(manifest: PhotoManifest, backup: BackupState) -> dict[str, Any]:
    """A processed photo: dimensions, every size's URL, and the backup state."""
    return {
        "id": manifest.photo_id,
        "ticket_id": manifest.ticket_id,
        "format": manifest.format,
        "width": manifest.width,
        "height": manifest.height,
        "bytes": manifest.bytes,
        "sha256": manifest.sha256,
        "sizes": sizes_view(manifest.photo_id, manifest.sizes),
        "backup": backup.value,
    }


def gallery_view(
    rows: list[GalleryRow], size_names: list[str], next_page: str | None
) -> dict[str, Any]:
    """A page of the gallery; ``next`` is the cursor of the following page (None: the end)."""
    photos = [
        {
            "id": row.photo_id,
            "url": f"/photos/{row.photo_id}",
            "sizes": {name: f"/photos/{row.photo_id}/{name}" for name in size_names},
            "completed_at": row.completed_at.isoformat(timespec="milliseconds"),
        }
        for row in rows
    ]
    return {"photos": photos, "next": next_page}


def json_bytes(body: Any) -> bytes:
    """Compact JSON in the order the view built it (so a photo's sizes stay largest first).

    Stable all the same: every view builds its dicts in one fixed order, so equal bodies
    get equal bytes and equal ETags.
    """
    return json.dumps(body, separators=(",", ":")).encode()


def etag_of(content: bytes) -> str:
    """A strong validator from the representation's bytes."""
    return '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"'


def not_modified(request: Request, etag: str) -> bool:
    """Whether the client already holds this representation (If-None-Match)."""
    header = request.headers.get("if-none-match", "")
    return header.strip() == "*" or etag in [tag.strip() for tag in header.split(",")]


def cached_json(
    request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response with an ETag of its bytes, or 304 when the client's copy is current."""
    return cached_content(request, json_bytes(body), status, headers)


def cached_content(
    request: Request, content: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON already in bytes, with an ETag of them, or 304 when the client's copy is current."""
    return _validated(request, etag_of(content), lambda: content, status, headers)


def versioned_json(
    request: Request, etag: str, body: Callable[[], Any], headers: dict[str, str]
) -> Response:
    """A JSON response whose ETag is known before its body, so a 304 never builds one."""
    return _validated(request, etag, lambda: json_bytes(body()), 200, headers)


def _validated(
    request: Request,
    etag: str,
    content: Callable[[], bytes],
    status: int,
    headers: dict[str, str] | None,
) -> Response:
    all_headers = {"ETag": etag, "Cache-Control": "no-cache", **(headers or {})}
    if status == 200 and not_modified(request, etag):
        return Response(status_code=304, headers=all_headers)
    return Response(content(), status, headers=all_headers, media_type="application/json")
