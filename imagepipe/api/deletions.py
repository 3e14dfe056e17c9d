"""Deletion tickets and account closures as the API shows them, to whom it shows them.

deletion_view(deletion, copies)   `GET /deletions/{id}`: status (trashed -> deleting ->
                                  deleted), each copy's state, the receipt once deleted
DeletionReads.ticket(grant, id)   the owner's ticket (an admin's too); 404 for anyone else
closure_view(closure, progress)   `GET /owners/{sub}/photos/deletion`
"""

from __future__ import annotations

from typing import Any

from imagepipe.catalog.closures import Closure, ClosureCatalog
from imagepipe.catalog.deletions import TRASHED, Deletion, DeletionCatalog, rfc3339
from imagepipe.errors import NotFound
from imagepipe.grants import ADMIN, Grant
from imagepipe.ids import is_ticket_id

NO_SUCH_DELETION = "no such deletion"
NOT_STARTED = {"primary": "pending", "backup": "pending"}


def deletion_view(deletion: Deletion, copies: dict[str, str]) -> dict[str, Any]:
    """The deletion ticket's JSON."""
    links = {"self": f"/deletions/{deletion.ticket_id}"}
    if deletion.state == TRASHED:
        links["restore"] = f"/photos/{deletion.photo_id}/restore"
    return {
        "id": deletion.ticket_id,
        "photo_id": deletion.photo_id,
        "status": deletion.state,
        "requested_at": rfc3339(deletion.requested_at),
        "purge_after": rfc3339(deletion.purge_after),
        "started_at": rfc3339(deletion.started_at),
        "completed_at": rfc3339(deletion.completed_at),
        "copies": copies if deletion.started_at is not None else NOT_STARTED,
        "receipt": deletion.receipt,
        "links": links,
    }


def closure_view(closure: Closure, progress: dict[str, int]) -> dict[str, Any]:
    """An account closure's JSON: its state and how far it has got."""
    return {
        "id": closure.ticket_id,
        "owner": closure.owner,
        "status": closure.state,
        "requested_at": rfc3339(closure.requested_at),
        "completed_at": rfc3339(closure.completed_at),
        "photos": {
            "left": progress.get("left", 0),
            "trashed": progress.get("trashed", 0),
            "deleting": progress.get("deleting", 0),
            "deleted": progress.get("deleted", 0),
        },
        "links": {"self": f"/owners/{closure.owner}/photos/deletion"},
    }


class DeletionReads:
    """Deletion tickets and closures, read on behalf of a caller."""

    def __init__(self, catalog: DeletionCatalog, closures: ClosureCatalog) -> None:
        self.catalog, self.closures = catalog, closures

    async def ticket(self, grant: Grant, ticket_id: str) -> dict[str, Any]:
        """The deletion ticket, for its owner or an admin; 404 as for no ticket otherwise."""
        found = await self.catalog.by_ticket(ticket_id) if is_ticket_id(ticket_id) else None
        if found is None or not (grant.owner == found.owner or grant.allows(ADMIN)):
            raise NotFound(NO_SUCH_DELETION)
        return await self.view(found)

    async def view(self, deletion: Deletion) -> dict[str, Any]:
        """The ticket's JSON, with each copy's state read now."""
        copies = await self.catalog.copies(deletion.photo_id) if deletion.started_at else {}
        return deletion_view(deletion, copies)

    async def closure(self, owner: str) -> dict[str, Any]:
        """The owner's closure and its progress; 404 when none was asked for."""
        found = await self.closures.get(owner)
        if found is None:
            raise NotFound("no deletion of this owner's photos was asked for")
        return closure_view(found, await self.closures.progress(owner))
