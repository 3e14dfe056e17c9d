"""The clients the web tier uses, made once in the app's lifespan and injected into routes."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe import keys
from imagepipe.api.deletions import DeletionReads
from imagepipe.api.events import TicketEvents
from imagepipe.api.fairuse import FairUse
from imagepipe.api.idempotency import IdempotencyKeys
from imagepipe.api.indexing import PhotoIndex
from imagepipe.api.polls import render_view
from imagepipe.api.privacy import PhotoReads
from imagepipe.api.ratelimit import RateLimiter
from imagepipe.api.signing import UrlSigner
from imagepipe.api.visibility import Visibilities
from imagepipe.catalog.closures import ClosureCatalog
from imagepipe.catalog.deletions import DeletionCatalog
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.migrate import require_current_schema
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.usage import OwnerUsage
from imagepipe.catalog.visibility import VisibilityCatalog
from imagepipe.config import Settings
from imagepipe.connections import check_redis_policy, connect
from imagepipe.errors import ServiceOverloaded
from imagepipe.replication.deletion import Deletions
from imagepipe.replication.log import ReplicationLog
from imagepipe.resumable import ResumableStore
from imagepipe.storage import Storage
from imagepipe.storage.factory import partial_uploads, primary_storage
from imagepipe.storage.partial import PartialUploads
from imagepipe.tickets import TicketStore

RETRY_AFTER_DEPTH_S = 0.1


@dataclass
class Services:
    """Everything a request handler needs, built from one Settings."""

    settings: Settings
    redis: ArqRedis
    engine: AsyncEngine
    catalog: PhotoCatalog
    primary: Storage
    tickets: TicketStore
    replication: ReplicationLog
    idempotency: IdempotencyKeys
    index: PhotoIndex
    events: TicketEvents
    visibilities: Visibilities
    reads: PhotoReads
    fair_use: FairUse
    resumables: ResumableStore
    partials: PartialUploads
    deletions: Deletions
    closures: ClosureCatalog
    deletion_reads: DeletionReads
    # (read at, depth): pollers' Retry-After may be this old; it only paces their next poll
    _polled_depth: tuple[float, int] = field(default=(-math.inf, 0), repr=False)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Connect to Redis, the catalog and primary storage; start the event fan-out.

        Refuses (RedisConfigError, SchemaOutdated) a Redis that may evict, or a catalog whose
        schema is not this code's.
        """
        redis = await connect(settings)
        await check_redis_policy(redis)
        engine = create_engine(settings)
        await require_current_schema(engine)
        catalog = PhotoCatalog(engine)
        events = TicketEvents(redis)
        await events.start()
        primary = primary_storage(settings)
        tickets = TicketStore(redis, settings.ticket_retention_s, render=render_view)
        access = VisibilityCatalog(engine)
        visibilities = Visibilities(redis, primary, tickets, access)
        index = PhotoIndex(redis, primary, tickets, catalog, visibilities)
        resumables = ResumableStore(redis)
        removals, closures = DeletionCatalog(engine), ClosureCatalog(engine)
        return cls(
            settings=settings,
            redis=redis,
            engine=engine,
            catalog=catalog,
            primary=primary,
            tickets=tickets,
            replication=ReplicationLog(redis, settings.ticket_retention_s),
            idempotency=IdempotencyKeys(
                redis, settings.idempotency_retention_s, lease_s=settings.idempotency_lease_s
            ),
            index=index,
            visibilities=visibilities,
            reads=PhotoReads(
                index,
                catalog,
                access,
                UrlSigner(settings.grant_secrets, settings.signed_url_ttl_s),
                [size.name for size in settings.sizes],
            ),
            events=events,
            fair_use=FairUse(
                RateLimiter(redis), OwnerUsage(engine), settings, resumables.unfinished_bytes
            ),
            resumables=resumables,
            partials=partial_uploads(settings, primary),
            deletions=Deletions(settings, redis, primary, removals),
            closures=closures,
            deletion_reads=DeletionReads(removals, closures),
        )

    async def stop(self) -> None:
        """Close every client."""
        await self.events.stop()
        await self.primary.close()
        await self.engine.dispose()
        await self.redis.aclose()

    async def queue_depth(self) -> int:
        """Jobs waiting on the uploads lane."""
        return int(await self.redis.zcard(keys.UPLOADS_QUEUE))

    async def retry_after(self) -> int:
        """Seconds a poller should wait: grows with the queue, 1 when it is empty.

        The depth is read at most every RETRY_AFTER_DEPTH_S per process: thousands of polls
        a second then cost Redis ten reads, not thousands.
        """
        read_at, depth = self._polled_depth
        if time.monotonic() - read_at > RETRY_AFTER_DEPTH_S:
            depth = await self.queue_depth()
            self._polled_depth = (time.monotonic(), depth)
        return retry_after_for(depth)

    async def refuse_if_overloaded(self) -> int:
        """Shed load rather than accept work that cannot finish (503 + Retry-After).

        Returns the queue depth it read, so the accept path need not read it again.
        """
        depth = await self.queue_depth()
        if depth >= self.settings.max_queue_depth:
            raise ServiceOverloaded(f"{depth} photos are waiting; try later", retry_after=30)
        root = self.settings.primary_root
        on_disk = not self.settings.primary_is_s3 and root.exists()  # S3 has no disk to fill
        if on_disk and shutil.disk_usage(root).free < self.settings.min_free_disk_bytes:
            raise ServiceOverloaded("primary storage is nearly full", retry_after=60)
        return depth


def retry_after_for(depth: int) -> int:
    """Seconds a poller should wait with ``depth`` jobs queued: 1 below 8, +1 per 8, at most 30."""
    return min(30, 1 + depth // 8)
