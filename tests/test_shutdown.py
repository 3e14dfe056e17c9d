"""A stopping role is bounded by IMAGEPIPE_STOP_GRACE_S (`imagepipe.shutdown`): the replicator,
with a copy stuck in a network call to a backup that accepted the connection and never answers,
still exits when told to, saying why, with SIGTERM's status."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from redis.asyncio import Redis

from imagepipe import ids, keys
from imagepipe.config import Settings
from imagepipe.replication import log as replication
from imagepipe.shutdown import EXIT_STATUS
from imagepipe.stack.processes import RoleProcess, stop_roles
from imagepipe.stack.roles import role_argv, role_env
from imagepipe.storage.factory import primary_storage

pytestmark = pytest.mark.faults


class Silent:
    """A TCP server that accepts connections and never answers: a hung backup S3."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


async def _queue_a_copy(settings: Settings, redis: Redis) -> None:
    key = keys.original(ids.new_photo_id(), "jpg")
    primary = primary_storage(settings)
    await primary.put_bytes(key, b"an original waiting for its copy")
    await primary.close()
    async with redis.pipeline(transaction=True) as pipe:
        replication.append(pipe, {key: 32}, 60)
        await pipe.execute()


async def _until_connected(silent: Silent, process: RoleProcess) -> None:
    async with asyncio.timeout(60):
        while not silent.held:
            process.check_alive()
            await asyncio.sleep(0.05)


async def test_a_replicator_stuck_in_a_copy_still_stops_within_its_grace(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    silent = Silent()
    settings = settings.model_copy(update={"backup_s3_endpoint": silent.url})
    await _queue_a_copy(settings, redis)
    env = role_env(settings, IMAGEPIPE_STOP_GRACE_S="2")  # the copy's read times out in 30 s
    process = RoleProcess("replicator", role_argv("replicator"), env, tmp_path / "r.log").start()
    try:
        await _until_connected(silent, process)  # the copy is under way, and hangs
        try:
            status = process.kill(signal.SIGTERM, timeout_s=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the replicator outlived its grace:\n{process.log_tail()}")
        assert status == EXIT_STATUS, process.log_tail()
        assert "did not stop within 2 s" in process.log_text()
    finally:
        stop_roles([process])
        silent.close()
