"""Redis connections reset while idle in the producer's pool (a load balancer, a failover, a
NAT timeout): the next writes must get a 503 (or succeed), never a 500."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.faults.harness import Services
from tests.faults.proxy import ChaosProxy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from tests.conftest import LocalRedisFactory

pytestmark = pytest.mark.slow

EVENT = {"source": "dev-0", "metric": "load", "value": 1}
CONCURRENT = 20
# Writes 10 ms apart, each taking 0.5 s: they overlap, so each needs a connection of its own,
# and they come in separate loop turns even on a loaded machine, so the producer does not
# coalesce them into one append.
SPACING_S = 0.01
LATENCY_S = 0.5


async def spaced(post: Callable[[], Awaitable[int]], index: int) -> int:
    """``post()`` after ``index`` spacings: each in a loop turn of its own (no coalescing)."""
    await asyncio.sleep(index * SPACING_S)
    return await post()


async def test_writes_after_idle_redis_connections_were_reset_get_no_500(
    local_redis_server: LocalRedisFactory, tmp_path: Path
) -> None:
    server = local_redis_server()
    async with ChaosProxy(server.port) as link:
        services = Services(link.url, tmp_path)
        async with services.serving("ingest-producer"):
            await services.ready()
            async with httpx.AsyncClient(base_url=services.base_url, timeout=10) as http:

                async def post() -> int:
                    return (await http.post("/api/ingest/events", json=EVENT)).status_code

                # Slow concurrent writes leave several connections idle in the pool, and use
                # them all again after the reset (a fast sequential write would reuse one).
                link.add_latency(LATENCY_S)
                first = await asyncio.gather(*(spaced(post, i) for i in range(CONCURRENT)))
                assert set(first) == {200}
                assert link.reset_all() >= CONCURRENT // 2
                await asyncio.sleep(0.05)
                statuses = await asyncio.gather(*(spaced(post, i) for i in range(CONCURRENT)))
    assert all(s in {200, 503} for s in statuses), Counter(statuses)
