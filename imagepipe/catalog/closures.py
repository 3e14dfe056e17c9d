"""Account-wide deletions (an account closed): one row per owner, its progress read live.

    request(owner, ticket_id)  the closure (a second request gets the same one, running again)
    running(limit)             closures the sweeper advances, a bounded batch at a time
    next_photos(owner, limit)  the owner's photos not deleted yet
    progress(owner)            photos left, and the owner's deletions by state
    complete(owner)            nothing left of the owner's photos

The work is in the catalog, not in a process: any replicator resumes a closure where the
last one stopped, because what is left is exactly the owner's photos not yet deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.schema import deletions, owner_deletions, photos

RUNNING, COMPLETED = "running", "completed"


@dataclass(frozen=True)
class Closure:
    """One owner's account-wide deletion."""

    owner: str
    ticket_id: str
    state: str
    requested_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> Closure:
        """From a result row of `owner_deletions`."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def next_photos_query(owner: str, limit: int) -> Select[Any]:
    """The owner's next photos not deleted yet (index `photos_live_owner`: no scan of the
    library, whatever its size)."""
    return (
        select(photos.c.id)
        .where(photos.c.owner == owner, photos.c.deleted_at.is_(None))
        .order_by(photos.c.id)
        .limit(limit)
    )


class ClosureCatalog:
    """Owners' account-wide deletions in PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @reconnecting
    async def request(self, owner: str, ticket_id: str) -> Closure:
        """Start deleting every photo of ``owner`` (again, if it finished: new uploads)."""
        row = {
            "owner": owner,
            "ticket_id": ticket_id,
            "state": RUNNING,
            "requested_at": datetime.now(tz=UTC),
        }
        upsert = insert(owner_deletions).values(row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[owner_deletions.c.owner],
            set_={"state": RUNNING, "completed_at": None},
        )
        async with session(self.engine) as db:
            await db.execute(upsert)
        found = await self.get(owner)
        assert found is not None  # just written
        return found

    @reconnecting
    async def get(self, owner: str) -> Closure | None:
        """The owner's closure, or None."""
        query = select(owner_deletions).where(owner_deletions.c.owner == owner)
        async with session(self.engine) as db:
            row = (await db.execute(query)).mappings().first()
        return Closure.of(row) if row is not None else None

    @reconnecting
    async def running(self, limit: int) -> list[Closure]:
        """Closures still running, oldest first."""
        query = (
            select(owner_deletions)
            .where(owner_deletions.c.state == RUNNING)
            .order_by(owner_deletions.c.requested_at)
            .limit(limit)
        )
        async with session(self.engine) as db:
            return [Closure.of(r) for r in (await db.execute(query)).mappings()]

    @reconnecting
    async def next_photos(self, owner: str, limit: int) -> list[str]:
        """Up to ``limit`` of the owner's photos not deleted yet."""
        async with session(self.engine) as db:
            return list((await db.execute(next_photos_query(owner, limit))).scalars())

    @reconnecting
    async def progress(self, owner: str) -> dict[str, int]:
        """Photos not deleted yet (``left``), and the owner's deletions by state."""
        left = select(func.count()).where(photos.c.owner == owner, photos.c.deleted_at.is_(None))
        states = (
            select(deletions.c.state, func.count())
            .where(deletions.c.owner == owner)
            .group_by(deletions.c.state)
        )
        async with session(self.engine) as db:
            counts = {"left": int((await db.execute(left)).scalar_one())}
            counts.update({state: int(n) for state, n in await db.execute(states)})
        return counts

    @reconnecting
    async def complete(self, owner: str) -> None:
        """The closure is done: every photo of the owner deleted from every copy."""
        done = {"state": COMPLETED, "completed_at": datetime.now(tz=UTC)}
        mine = owner_deletions.c.owner == owner
        async with session(self.engine) as db:
            await db.execute(update(owner_deletions).where(mine).values(done))
