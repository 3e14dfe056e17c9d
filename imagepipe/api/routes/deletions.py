"""Deletion routes: delete a photo, undo it from the trash, follow its ticket; close an
account (an admin's). HTTP only: `replication.deletion` does the work, `api.deletions`
answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from imagepipe.api.access import Admin, Deleter, Granted
from imagepipe.api.deps import ServicesDep
from imagepipe.grants import MAX_OWNER_CHARS
from imagepipe.ids import new_ticket_id

router = APIRouter(tags=["deletion"])
Owner = Annotated[str, Path(min_length=1, max_length=MAX_OWNER_CHARS)]


def _following(body: dict[str, Any], location: str) -> JSONResponse:
    """202 with the ticket, pointing at where it is followed."""
    headers = {"Location": location}
    if body["status"] not in ("deleted", "completed"):
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=202, headers=headers)


@router.delete("/photos/{photo_id}", status_code=202)
async def delete_photo(photo_id: str, services: ServicesDep, grant: Deleter) -> JSONResponse:
    """Delete your photo (photos:delete): gone for every reader at once, then removed from
    every copy; 202 with its deletion ticket (the same one again for a second DELETE)."""
    deletion = await services.deletions.request(grant.owner, photo_id)
    body = await services.deletion_reads.view(deletion)
    return _following(body, body["links"]["self"])


@router.post("/photos/{photo_id}/restore")
async def undo_deletion(photo_id: str, services: ServicesDep, grant: Deleter) -> dict[str, Any]:
    """Take your deleted photo out of the trash (`IMAGEPIPE_TRASH_S`); 409 once its removal
    has begun, 404 for a photo that is not yours or not deleted."""
    await services.deletions.undo(grant.owner, photo_id)
    return {"id": photo_id, "status": "restored", "links": {"photo": f"/photos/{photo_id}"}}


@router.get("/deletions/{ticket_id}")
async def get_deletion(ticket_id: str, services: ServicesDep, grant: Granted) -> dict[str, Any]:
    """A deletion ticket: `trashed` -> `deleting` -> `deleted`, each copy's state, and the
    receipt once every copy is gone; its owner's (or an admin's) only."""
    return await services.deletion_reads.ticket(grant, ticket_id)


@router.delete("/owners/{owner}/photos", status_code=202)
async def close_account(owner: Owner, services: ServicesDep, grant: Admin) -> JSONResponse:
    """Delete every photo of an owner (photos:admin): at a bounded rate, resumable, no trash;
    202 with its progress resource (the same one again for a second DELETE)."""
    await services.closures.request(owner, new_ticket_id())
    body = await services.deletion_reads.closure(owner)
    return _following(body, body["links"]["self"])


@router.get("/owners/{owner}/photos/deletion")
async def get_closure(owner: Owner, services: ServicesDep, grant: Admin) -> dict[str, Any]:
    """How far an owner's account-wide deletion has got (photos:admin)."""
    return await services.deletion_reads.closure(owner)
