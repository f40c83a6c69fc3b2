"""Huge entries written straight into the stream cannot blow up the worker or Redis."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from redis.asyncio import Redis

from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import LocalRedisFactory

pytestmark = pytest.mark.slow

KEYS = Settings(stream_shards=1).keys
ENTRIES = 300
ENTRY_BYTES = 1_000_000
RSS_LIMIT_BYTES = 200 * 1024 * 1024


async def test_300_entries_of_1mb_are_dead_lettered_with_a_bounded_worker_and_redis(
    local_redis_server: LocalRedisFactory, tmp_path: Path
) -> None:
    server = local_redis_server()
    async with Redis.from_url(server.url) as redis:
        blob = b"x" * ENTRY_BYTES
        for n in range(ENTRIES):
            await redis.xadd(KEYS.stream, {"source": f"dev-{n}", "metric": "cpu", "value": blob})
        memory_before = (await redis.info("memory"))["used_memory"]

        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
        env |= {
            "REDIS_URL": server.url,
            "INGEST_WORKER_HTTP_PORT": "0",
            "INGEST_LOG_FORMAT": "json",
            "INGEST_STREAM_SHARDS": "1",  # the test reads the one stream
            "INGEST_BLOCK_MS": "200",
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "ingest-worker"), env=env, stdout=out, stderr=out
            )
        peak = 0
        try:
            process = psutil.Process(worker.pid)
            deadline = time.monotonic() + 60
            while await redis.xlen(KEYS.dead_letter) < ENTRIES:
                assert worker.returncode is None, log.read_text()
                assert time.monotonic() < deadline, "not all dead-lettered in time"
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.02)
            peak = max(peak, process.memory_info().rss)
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), 15)

        letters = await redis.xrange(KEYS.dead_letter, count=ENTRIES) or []
        memory_after = (await redis.info("memory"))["used_memory"]
        pending = (await redis.xpending(KEYS.stream, Settings(stream_shards=1).consumer_group))[
            "pending"
        ]

    grown = memory_after - memory_before
    print(f"\n  worker peak RSS {peak / 2**20:.0f} MiB; Redis grew {grown} B")
    assert peak < RSS_LIMIT_BYTES
    assert pending == 0
    assert len(letters) == ENTRIES
    for _, fields in letters:
        assert fields is not None
        assert b"larger than INGEST_MAX_ENTRY_BYTES" in fields[b"reason"]
        assert len(fields[b"payload"]) < 4_096  # a bounded prefix, not a copy of 1 MB
    # 300 dead letters of about 1 KB each, not 300 MB of copies.
    assert memory_after - memory_before < 20 * 2**20
