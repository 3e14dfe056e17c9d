"""TCP proxies that tests put in front of the API to break links on purpose."""

from __future__ import annotations

import asyncio


class Proxy:
    """A listener on a free port whose connections `relay` serves (subclasses say how); every
    connection and its task are tracked, so `stop` can close them all and wait for them."""

    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # strong references, awaited on stop

    async def start(self) -> str:
        """Listen; the proxy's base URL."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """Close the listener and every connection still open; wait for their tasks."""
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.relay(reader, writer)
        finally:
            self.tasks.discard(task)

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection."""
        raise NotImplementedError
