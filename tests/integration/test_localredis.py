"""The embedded Redis Stack server behaves like the Redis the services expect."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

if TYPE_CHECKING:
    from tests.conftest import LocalRedisFactory


async def test_server_answers_timeseries_commands(local_redis_server: LocalRedisFactory) -> None:
    server = local_redis_server()
    async with Redis.from_url(server.url) as client:
        # redis-py leaves execute_command untyped; its TS.GET callback parses the value.
        added = await client.execute_command("TS.ADD", "ts:probe", 1_000, 21.5)  # type: ignore[no-untyped-call]
        latest = await client.execute_command("TS.GET", "ts:probe")  # type: ignore[no-untyped-call]

    assert added == 1_000
    assert latest == [1_000, 21.5]


async def test_appendonly_entry_survives_kill_and_restart(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server(appendonly=True)
    async with Redis.from_url(server.url) as client:
        entry_id = await client.xadd("events", {"n": "1"})
        # One local fsync confirmed, zero replicas: the entry is on disk before the crash.
        synced = await client.execute_command("WAITAOF", 1, 0, 1000)  # type: ignore[no-untyped-call]
        assert synced == [1, 0]

    server.kill()
    server.start()

    async with Redis.from_url(server.url) as client:
        assert await client.xrange("events") == [(entry_id, {b"n": b"1"})]


def test_stop_leaves_no_process(local_redis_server: LocalRedisFactory) -> None:
    server = local_redis_server()
    pid = server.pid
    assert pid is not None

    server.stop()

    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
