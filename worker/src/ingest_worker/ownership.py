"""Which worker runs which stream shard, with no configuration (``INGEST_STREAM_SHARDS`` > 1).

Every worker heartbeats in one sorted set; the live ones are those seen within a third of
``INGEST_CLAIM_IDLE_MS``. Each shard's owner is the live worker with the highest rendezvous
score (a hash of worker id and shard): adding or removing a worker moves only the shards it
wins or held, and no two workers need to agree on anything but the set. Ownership is held with
a lease per shard (a key in the shard's slot, with a TTL of half the claim time, renewed every
tick), so a shard is never run by two workers, and a dead worker's shards get a new owner
within ``INGEST_CLAIM_IDLE_MS``; that owner's loop reclaims the dead consumer's entries.

Each owned shard runs today's :class:`~ingest_worker.daemon.Worker` loop on its own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from ingest_shared.functions import hold_lease, release_lease
from ingest_shared.keys import stable_hash
from ingest_shared.redis_client import call
from ingest_shared.streams import is_transient

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ingest_shared.keys import Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_worker.daemon import Worker

TICK_S = 1.0
log = structlog.get_logger("ingest_worker")


def owner_of(shard: Shard, workers: Sequence[str]) -> str | None:
    """The rendezvous winner for ``shard`` among ``workers`` (None without workers)."""
    return max(workers, key=lambda worker: stable_hash(f"{worker}|{shard.tag}"), default=None)


class ShardOwnership:
    """Runs one Worker per shard this process wins; ``await run()`` until ``stop()``."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        make_worker: Callable[[Shard], Worker],
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._me = settings.consumer_name
        self._make_worker = make_worker
        self._on_tick = on_tick
        self._live_ms = max(1_000, settings.claim_idle_ms // 3)
        self._lease_ms = max(2_000, settings.claim_idle_ms // 2)
        self._running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self.stop_requested = asyncio.Event()

    def stop(self) -> None:
        """Stop every shard loop (each finishes its batch in hand) and give the shards up."""
        self.stop_requested.set()
        for worker, _ in self._running.values():
            worker.stop()

    @property
    def owned(self) -> list[int]:
        """The indexes of the shards this process runs now."""
        by_tag = {shard.tag: shard.index for shard in self._keys.shards}
        return sorted(by_tag[tag] for tag in self._running)

    async def run(self) -> None:
        """Heartbeat, take and give up shards every tick; raise what a shard loop raised."""
        try:
            while not self.stop_requested.is_set():
                try:
                    await self._tick()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    # Leases run out meanwhile if Redis stays away; the loops back off on
                    # their own, and the next tick takes the shards back.
                    log.warning("ownership_tick_failed", error=str(exc))
                self._raise_if_a_loop_failed()
                self._on_tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), TICK_S)
        finally:
            await self._stop_all()

    async def _tick(self) -> None:
        now = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._keys.workers, {self._me: now})
        pipe.zremrangebyscore(self._keys.workers, "-inf", now - self._live_ms)
        pipe.zrange(self._keys.workers, 0, -1)
        *_, members = await pipe.execute()
        live = sorted(member.decode() for member in members)
        for shard in self._keys.shards:
            wanted = owner_of(shard, live) == self._me
            running = shard.tag in self._running
            if wanted:
                held = await hold_lease(self._redis, shard.lease(), self._me, self._lease_ms)
                if held and not running:
                    self._start(shard)
                elif not held and running:
                    log.warning("shard_lease_lost", shard=shard.index)
                    await self._stop(shard)
            elif running:
                await self._stop(shard)

    def _start(self, shard: Shard) -> None:
        worker = self._make_worker(shard)
        task = asyncio.create_task(worker.run(), name=f"ingest-worker-shard-{shard.index}")
        self._running[shard.tag] = (worker, task)
        log.info("shard_taken", shard=shard.index, stream=shard.stream)

    async def _stop(self, shard: Shard) -> None:
        """Let the shard's loop finish its batch in hand, then give the lease up."""
        worker, task = self._running.pop(shard.tag)
        worker.stop()
        await asyncio.wait({task})
        with contextlib.suppress(Exception):
            await release_lease(self._redis, shard.lease(), self._me)
        log.info("shard_given_up", shard=shard.index)

    async def _stop_all(self) -> None:
        by_tag = {shard.tag: shard for shard in self._keys.shards}
        for tag in list(self._running):
            await self._stop(by_tag[tag])
        with contextlib.suppress(Exception):
            await call(self._redis, "ZREM", self._keys.workers, self._me)

    def _raise_if_a_loop_failed(self) -> None:
        for worker_task in self._running.values():
            task = worker_task[1]
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
