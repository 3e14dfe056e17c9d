"""Each owner's stored bytes: a counter kept by the statements that record objects.

    counting(new_objects, owners)   the last step of `PhotoCatalog.accepted` / `completed`:
                                    adds the bytes of the objects that statement inserted
    bytes_per_owner, adding         the same for a bulk load, in its transaction
    counting(..., sign=-1)          a deletion's: takes off the bytes of the objects it dropped
    OwnerUsage.stored_bytes(owner)  one row read, never a SUM over a big owner's objects
    OwnerUsage.recount()            the counters made again from the objects (`reindex`)

The counter moves in the same statement as the objects it counts, so the two never disagree:
an object recorded twice (a retried callback, a re-run audit) is inserted once and counted once.
Originals and derivatives count; manifests (a few hundred bytes, the catalog's own) do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    FromClause,
    Select,
    Text,
    column,
    delete,
    func,
    literal,
    select,
    text,
    values,
)
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.schema import objects, owners, photos

COUNTED = ("original", "derivative")


def counting(new_objects: CTE, owner_of: dict[str, str], sign: int = 1) -> Insert:
    """Add to each owner's counter the bytes of ``new_objects`` (RETURNING photo_id, kind,
    bytes of the objects this statement inserted, or with ``sign`` -1 deleted);
    ``owner_of``: photo id -> owner."""
    owned = _owned(owner_of)
    on = owned.c.photo_id == new_objects.c.photo_id
    return _into_counters(_per_owner(owned.c.owner, new_objects, owned, on, sign), add=True)


def _owned(owner_of: dict[str, str]) -> FromClause:
    """(photo_id, owner) rows. One photo (every upload) as bound literals: a statement
    SQLAlchemy caches, where a VALUES list is compiled again on every call."""
    if len(owner_of) == 1:
        ((photo_id, owner),) = owner_of.items()
        one = select(literal(photo_id, Text).label("photo_id"), literal(owner, Text).label("owner"))
        return one.subquery("owned")
    return values(column("photo_id", Text), column("owner", Text), name="owned").data(
        list(owner_of.items())
    )


def _per_owner(
    owner: ColumnElement[str],
    sized: FromClause,
    owned: FromClause,
    on: ColumnElement[bool],
    sign: int = 1,
) -> Select[str, Any]:
    """Each owner's bytes of the counted objects in ``sized`` (joined to ``owned`` ``on``)."""
    return (
        select(owner, func.sum(sized.c.bytes) * sign)
        .join_from(sized, owned, on)
        .where(sized.c.kind.in_(COUNTED))
        .group_by(owner)
    )


def _into_counters(per_owner: Select[str, Any], add: bool) -> Insert:
    """Each owner's bytes added to their counter (``add``), or set as it."""
    upsert = insert(owners).from_select(["owner", "stored_bytes"], per_owner)
    found = upsert.excluded.stored_bytes
    counter = owners.c.stored_bytes + found if add else found
    return upsert.on_conflict_do_update(
        index_elements=[owners.c.owner], set_={"stored_bytes": counter}
    )


def bytes_per_owner(
    inserted: Sequence[Sequence[Any]], owner_of: dict[str, str]
) -> list[dict[str, Any]]:
    """Each owner's bytes among newly inserted objects (rows of photo_id, kind, bytes), as
    the parameters of `adding`: the bulk path's `counting`."""
    added: dict[str, int] = {}
    for photo_id, kind, size in inserted:
        if kind in COUNTED:
            owner = owner_of[photo_id]
            added[owner] = added.get(owner, 0) + size
    return [{"owner": owner, "stored_bytes": size} for owner, size in added.items()]


def adding() -> Insert:
    """Add ``stored_bytes`` to ``owner``'s counter (made at that value if it is new)."""
    upsert = insert(owners)
    counter = owners.c.stored_bytes + upsert.excluded.stored_bytes
    return upsert.on_conflict_do_update(
        index_elements=[owners.c.owner], set_={"stored_bytes": counter}
    )


class OwnerUsage:
    """Owners' stored bytes in the catalog."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @reconnecting
    async def stored_bytes(self, owner: str) -> int:
        """Bytes of the owner's originals and derivatives (0 for an owner with none)."""
        query = select(owners.c.stored_bytes).where(owners.c.owner == owner)
        async with session(self.engine) as db:
            found = await db.scalar(query)
        return int(found or 0)

    @reconnecting
    async def recount(self) -> None:
        """Make every counter again from the objects (they are the truth; `reindex` runs it).

        The table is locked first: a statement recording objects waits, rather than adding
        its bytes to a counter this is about to overwrite.
        """
        with_objects = select(photos.c.owner).join(objects).where(objects.c.kind.in_(COUNTED))
        async with session(self.engine, atomic=True) as db:
            await db.execute(text("LOCK TABLE owners IN SHARE ROW EXCLUSIVE MODE"))
            on = photos.c.id == objects.c.photo_id
            await db.execute(
                _into_counters(_per_owner(photos.c.owner, objects, photos, on), add=False)
            )
            await db.execute(delete(owners).where(owners.c.owner.not_in(with_objects)))
