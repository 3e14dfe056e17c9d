"""Rebuilding what Redis forgot about processed photos, from primary storage.

Redis holds a processed photo's ticket (for the retention), its place in the gallery and its
objects' backup state; primary holds its manifest (ticket id, created_at, sizes). When Redis
loses them (a crash inside the AOF's last second, a restore from an older snapshot), the
audit calls on this module for each photo whose manifest and derivatives are complete:

    its ticket is gone, still within the retention -> the completed ticket, under its own id,
                                                      for the TTL it had left, and the
                                                      photo -> ticket link
    it is missing from the gallery                  -> back in, at the time it completed

A ticket that expired normally stays expired: its retention runs from the manifest's
created_at, as the ticket's did. (Backup state is the audit's own: `ReplicationLog.confirm`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.models import PhotoManifest, Ticket, TicketStatus
from imagepipe.storage import ObjectInfo, Storage
from imagepipe.tickets import TicketStore

Finding = Callable[[str, str], None]  # (kind, subject)
# past queued (1) -> processing (2) -> completed (3): an ETag or event id cached before the
# loss names an older version, so a client fetches the restored ticket once
RESTORED_VERSION = 4


def restored_ticket(manifest: PhotoManifest, completed_at: float) -> Ticket:
    """The completed ticket a manifest records (its attempt count is not kept: 1)."""
    return Ticket(
        id=manifest.ticket_id,
        **manifest.original_facts(),
        status=TicketStatus.COMPLETED,
        created_at=manifest.created_at,
        updated_at=completed_at,
        attempts=1,
        version=RESTORED_VERSION,
        sizes=manifest.sizes,
    )


class Rebuild:
    """Puts back the ticket and gallery entry of complete photos that Redis forgot."""

    def __init__(
        self, redis: Redis, primary: Storage, tickets: TicketStore, found: Finding
    ) -> None:
        self.redis, self.primary, self.tickets, self.found = redis, primary, tickets, found

    async def photo(self, photo_id: str, manifest: ObjectInfo, ticket: Ticket | None) -> None:
        """A complete photo: its ticket (when it is gone within retention), its gallery entry."""
        # the manifest is written just before the ticket completes: its time stands in for that
        completed_at = ticket.updated_at if ticket else manifest.modified
        if ticket is None and time.time() - manifest.modified < self.tickets.retention_s:
            await self.ticket(photo_id, completed_at)  # older manifests: expired normally
        if await self.redis.zadd(keys.GALLERY, {photo_id: completed_at}, nx=True):
            self.found("gallery_restored", photo_id)

    async def ticket(self, photo_id: str, completed_at: float) -> None:
        """Recreate the completed ticket the manifest names, for the retention it has left."""
        record = PhotoManifest.model_validate_json(await self.primary.read(keys.manifest(photo_id)))
        ttl_s = int(record.created_at + self.tickets.retention_s - time.time())
        if ttl_s > 0 and await self.tickets.restore(restored_ticket(record, completed_at), ttl_s):
            self.found("tickets_restored", record.ticket_id)
