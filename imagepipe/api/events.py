"""Ticket change notifications: one Redis subscription per API process, fanned out in memory.

An SSE client must not hold a Redis connection for its whole life (a few hundred open
streams would run the pool dry), so each process subscribes once to every ticket's channel
and wakes the local waiters of the ticket that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from imagepipe import keys

log = logging.getLogger(__name__)
RESUBSCRIBE_DELAY_S = 1.0
LISTEN_POLL_S = 1.0  # below every allowed Redis read timeout


class TicketEvents:
    """Wake-ups for tickets that changed, from one pattern subscription."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin listening (in the background, resubscribing after Redis hiccups)."""
        self.task = asyncio.create_task(self._listen_forever(), name="ticket-events")

    async def stop(self) -> None:
        """Stop listening."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @contextlib.contextmanager
    def watch(self, ticket_id: str) -> Iterator[asyncio.Event]:
        """An event that is set whenever the ticket changes, while the block runs."""
        changed = asyncio.Event()
        self.waiters[ticket_id].add(changed)
        try:
            yield changed
        finally:
            self.waiters[ticket_id].discard(changed)
            if not self.waiters[ticket_id]:
                del self.waiters[ticket_id]

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                log.warning("ticket event subscription lost (%s); resubscribing", exc)
                self._wake_all()  # anything may have changed while we were deaf
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    async def _listen(self) -> None:
        prefix = keys.ticket_channel("")
        async with self.redis.pubsub() as pubsub:
            await pubsub.psubscribe(keys.ticket_channel("*"))
            while True:
                # a bounded wait, not listen(): that one reads under the pool's read timeout
                # and would end the subscription after a few quiet seconds
                message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                if message is not None and message["type"] == "pmessage":
                    self._wake(message["channel"].decode().removeprefix(prefix))

    def _wake(self, ticket_id: str) -> None:
        for changed in self.waiters.get(ticket_id, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiters in self.waiters.values():
            for changed in waiters:
                changed.set()
