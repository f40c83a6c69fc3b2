"""Workers share stream shards with no configuration: one owner per shard, takeover when a
worker stops or dies, and no consumer left behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ingest_shared import keys as k
from ingest_shared.functions import forget_consumers
from ingest_shared.keys import Keys
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call, create_redis
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_worker.daemon import Worker
from ingest_worker.ownership import ShardOwnership, lease_ms, owner_of, takeover_idle_ms

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

    from ingest_shared.keys import Shard

SHARDS = 4
GROUP = Settings().consumer_group


def settings_for(url: str, name: str, **changes: object) -> Settings:
    base = replace(
        Settings(),
        redis_url=url,
        stream_shards=SHARDS,
        consumer_name=name,
        block_ms=50,
        claim_interval_ms=50,
        claim_idle_ms=3_000,
        batch_size=100,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def owning(settings: Settings) -> AsyncIterator[ShardOwnership]:
    """A ShardOwnership running with its own client; stopped (cleanly) at the end."""
    client = create_redis(settings.redis_url, socket_timeout=2.0)

    def shard_worker(shard: Shard) -> Worker:
        processor = create_processor(client, settings, shard)
        return Worker(client, processor, settings, shard=shard)

    ownership = ShardOwnership(client, settings, shard_worker)
    task = asyncio.create_task(ownership.run())
    try:
        yield ownership
    finally:
        ownership.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool] | bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def enqueue(redis: Redis, keys: Keys, sources: range, base_ms: int) -> int:
    """One event per source, each on its source's shard; the number enqueued."""
    for n in sources:
        source = f"dev-{n}"
        fields = {
            k.FIELD_SOURCE: source,
            k.FIELD_METRIC: "cpu",
            k.FIELD_VALUE: str(n),
            k.FIELD_OCCURRED_AT: format_ms(base_ms + n),
        }
        flat: list[str | bytes] = list(itertools.chain.from_iterable(fields.items()))
        await call(redis, "XADD", keys.shard_of_source(source).stream, "*", *flat)
    return len(sources)


async def stored(redis: Redis, keys: Keys, sources: range) -> int:
    found = 0
    for n in sources:
        key = keys.source_raw("cpu", f"dev-{n}")
        if await redis.exists(key):
            found += len(await call(redis, "TS.RANGE", key, "-", "+"))
    return found


def test_each_shard_has_exactly_one_rendezvous_owner_and_few_move() -> None:
    shards = Keys("s", "d", "m", stream_shards=16).shards
    two = ["worker-a", "worker-b"]
    three = [*two, "worker-c"]
    owners_two = {shard.tag: owner_of(shard, two) for shard in shards}
    owners_three = {shard.tag: owner_of(shard, three) for shard in shards}
    assert set(owners_two.values()) == set(two)
    # Adding a worker moves only the shards it wins; the others keep their owner.
    moved = [tag for tag in owners_two if owners_two[tag] != owners_three[tag]]
    assert moved
    assert all(owners_three[tag] == "worker-c" for tag in moved)
    assert owner_of(shards[0], []) is None


async def test_two_workers_split_the_shards_and_one_takes_over_when_the_other_stops(
    redis: Redis, redis_url: str
) -> None:
    keys = settings_for(redis_url, "a").keys
    base = now_ms() - 60_000
    async with owning(settings_for(redis_url, "worker-a")) as a:
        async with owning(settings_for(redis_url, "worker-b")) as b:
            await eventually(lambda: len(a.owned) + len(b.owned) == SHARDS)
            assert not set(a.owned) & set(b.owned)
            assert a.owned
            assert b.owned
            total = await enqueue(redis, keys, range(40), base)
            await eventually(lambda: _stored_is(redis, keys, range(40), total))
        # b stopped cleanly: its shards go to a, within the liveness and lease times.
        await eventually(lambda: len(a.owned) == SHARDS)
        more = await enqueue(redis, keys, range(40, 80), base)
        await eventually(lambda: _stored_is(redis, keys, range(40, 80), more))
        # b's consumers held nothing, so it removed them as it stopped.
        for shard in keys.shards:
            names = [c["name"] for c in await redis.xinfo_consumers(shard.stream, GROUP)]
            assert b"worker-b" not in names


async def _stored_is(redis: Redis, keys: Keys, sources: range, count: int) -> bool:
    return await stored(redis, keys, sources) == count


async def test_a_dead_workers_shards_and_pending_entries_are_taken_over(
    redis: Redis, redis_url: str
) -> None:
    keys = settings_for(redis_url, "a").keys
    base = now_ms() - 60_000
    # A worker that died holding shards: its heartbeat is old, its leases are held, and entries
    # were delivered to it and never acknowledged.
    stale = now_ms() - 60_000
    await redis.zadd(keys.workers, {"worker-dead": stale})
    for shard in keys.shards:
        await redis.set(shard.lease(), "worker-dead", px=2_000)
        await redis.xgroup_create(shard.stream, GROUP, "0", mkstream=True)
    total = await enqueue(redis, keys, range(20), base)
    for shard in keys.shards:
        await redis.xreadgroup(GROUP, "worker-dead", {shard.stream: ">"}, count=100)

    async with owning(settings_for(redis_url, "worker-a")) as a:
        await eventually(lambda: len(a.owned) == SHARDS)
        await eventually(lambda: _stored_is(redis, keys, range(20), total))
        for shard in keys.shards:
            assert (await redis.xpending(shard.stream, GROUP))["pending"] == 0


async def test_the_new_owner_claims_a_dead_owners_entries_without_waiting_the_claim_time(
    redis: Redis, redis_url: str
) -> None:
    # With INGEST_CLAIM_IDLE_MS at 12 s the lease is 6 s: a dead owner's entries are at least
    # 5 s idle when its lease runs out, and the new owner claims them then, not 12 s after.
    settings = settings_for(redis_url, "worker-a", stream_shards=1, claim_idle_ms=12_000)
    keys = settings.keys
    [shard] = keys.shards
    await redis.zadd(keys.workers, {"worker-dead": now_ms() - 60_000})
    await redis.xgroup_create(shard.stream, GROUP, "0", mkstream=True)
    total = await enqueue(redis, keys, range(20), now_ms() - 60_000)
    await redis.xreadgroup(GROUP, "worker-dead", {shard.stream: ">"}, count=100)
    await redis.set(shard.lease(), "worker-dead", px=lease_ms(settings))

    client = create_redis(settings.redis_url, socket_timeout=2.0)
    take = takeover_idle_ms(settings)

    def shard_worker(shard: Shard) -> Worker:
        processor = create_processor(client, settings, shard)
        return Worker(client, processor, settings, shard=shard, takeover_idle_ms=take)

    ownership = ShardOwnership(client, settings, shard_worker)
    task = asyncio.create_task(ownership.run())
    try:
        await eventually(lambda: ownership.owned == [0], within_s=10)
        taken_at = time.monotonic()
        await eventually(lambda: _stored_is(redis, keys, range(20), total), within_s=10)
        assert time.monotonic() - taken_at < settings.claim_idle_ms / 3000
        assert (await redis.xpending(shard.stream, GROUP))["pending"] == 0
    finally:
        ownership.stop()
        await asyncio.wait_for(task, 15)
        await client.aclose()


async def test_consumers_that_died_with_nothing_pending_are_removed(redis: Redis) -> None:
    keys = Keys("telemetry:events", "telemetry:events:dead-letter", "telemetry:metrics")
    await redis.xgroup_create(keys.stream, GROUP, "0", mkstream=True)
    await call(redis, "XGROUP", "CREATECONSUMER", keys.stream, GROUP, "gone-long-ago")
    await redis.xadd(keys.stream, {"a": "1"})
    await redis.xreadgroup(GROUP, "busy", {keys.stream: ">"}, count=1)
    await asyncio.sleep(0.05)

    removed = await forget_consumers(redis, keys, GROUP, idle_ms=10)

    assert removed == ["gone-long-ago"]  # "busy" holds an entry: kept whatever its idle time
    names = [c["name"] for c in await redis.xinfo_consumers(keys.stream, GROUP)]
    assert names == [b"busy"]
