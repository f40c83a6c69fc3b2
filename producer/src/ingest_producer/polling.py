"""A background task that samples something from Redis at an interval for the life of a block
(the backlog monitor, the read replica's lag)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

STOP_TIMEOUT_S = 2.0


@contextlib.asynccontextmanager
async def polling(
    refresh: Callable[[], Awaitable[None]],
    interval_s: float,
    name: str,
    failed: Callable[[RedisError | OSError], None],
) -> AsyncIterator[None]:
    """Run ``refresh()`` every ``interval_s`` while the block runs; a Redis or socket error
    goes to ``failed`` and the next tick tries again."""
    stopping = asyncio.Event()

    async def loop() -> None:
        while not stopping.is_set():
            try:
                await refresh()
            except (RedisError, OSError) as exc:
                failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        # The flag, not only cancel(): a cancellation landing inside a redis-py call can be
        # absorbed there, and then the loop would go on and this await never return.
        stopping.set()
        task.cancel()
        await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
