"""XAUTOCLAIM of other consumers' idle entries, and delivery counts from XPENDING."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from ingest_shared.redis_client import call
from ingest_shared.settings import Settings
from ingest_worker.reader import StreamReader
from ingest_worker.reclaim import MAX_DELIVERIES_REASON, Reclaimer

if TYPE_CHECKING:
    from redis.asyncio import Redis

SETTINGS = Settings(
    consumer_name="alive", claim_idle_ms=50, batch_size=2, max_deliveries=3, stream_shards=1
)
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group


@pytest.fixture
async def group(redis: Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)


async def leave_pending(redis: Redis, count: int, consumer: str = "dead") -> list[bytes]:
    """Enqueue ``count`` entries and read them as ``consumer``, which never acks them."""
    for n in range(count):
        await redis.xadd(STREAM, {"n": str(n)})
    reply = await call(redis, "XREADGROUP", "GROUP", GROUP, consumer, "STREAMS", STREAM, ">")
    return [entry_id for entry_id, _ in reply[0][1]]


async def idle() -> None:
    await asyncio.sleep(SETTINGS.claim_idle_ms / 1000 * 2)


async def pending_rows(redis: Redis) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await redis.xpending_range(STREAM, GROUP, "-", "+", 100)
    return rows


async def owners(redis: Redis) -> dict[bytes, bytes]:
    return {row["message_id"]: row["consumer"] for row in await pending_rows(redis)}


@pytest.mark.usefixtures("group")
async def test_only_entries_idle_longer_than_claim_idle_ms_are_claimed(redis: Redis) -> None:
    reclaimer = Reclaimer(redis, SETTINGS, StreamReader(redis, SETTINGS))
    [entry_id] = await leave_pending(redis, 1)

    assert (await reclaimer.claim()).entries == []
    await idle()
    claimed = await reclaimer.claim()

    assert claimed.entries == [(entry_id, {b"n": b"0"})]
    assert claimed.forced == {}
    assert await owners(redis) == {entry_id: b"alive"}


@pytest.mark.usefixtures("group")
async def test_reclaim_keeps_its_cursor_between_runs(redis: Redis) -> None:
    reclaimer = Reclaimer(redis, SETTINGS, StreamReader(redis, SETTINGS))
    ids = await leave_pending(redis, 5)
    await idle()

    runs = [await reclaimer.claim() for _ in range(3)]

    assert [[entry_id for entry_id, _ in run.entries] for run in runs] == [
        ids[0:2],
        ids[2:4],
        ids[4:5],
    ]
    assert [run.more for run in runs] == [True, True, False]


@pytest.mark.usefixtures("group")
async def test_entries_deleted_while_pending_are_reported_without_fields(redis: Redis) -> None:
    reclaimer = Reclaimer(redis, SETTINGS, StreamReader(redis, SETTINGS))
    deleted, kept = await leave_pending(redis, 2)
    await redis.xdel(STREAM, deleted)
    await idle()

    claimed = await reclaimer.claim()

    assert claimed.entries == [(kept, {b"n": b"1"}), (deleted, None)]


@pytest.mark.usefixtures("group")
async def test_entry_delivered_more_than_max_deliveries_is_forced_to_the_dead_letter(
    redis: Redis,
) -> None:
    reclaimer = Reclaimer(redis, SETTINGS, StreamReader(redis, SETTINGS))
    poison, healthy = await leave_pending(redis, 2)
    # Two more deliveries of the first entry only: 3 in all, the limit. Claiming makes it 4.
    for _ in range(2):
        await redis.xreadgroup(GROUP, "dead", {STREAM: "0"}, count=1)
    await idle()

    claimed = await reclaimer.claim()

    assert [entry_id for entry_id, _ in claimed.entries] == [poison, healthy]
    assert claimed.forced == {poison: MAX_DELIVERIES_REASON}
    assert [row["times_delivered"] for row in await pending_rows(redis)] == [4, 2]


@pytest.mark.usefixtures("group")
async def test_the_first_pass_after_a_takeover_uses_the_takeover_idle_time_then_the_usual(
    redis: Redis,
) -> None:
    slow = Settings(consumer_name="alive", claim_idle_ms=60_000, batch_size=10, stream_shards=1)
    reclaimer = Reclaimer(redis, slow, StreamReader(redis, slow), takeover_idle_ms=50)
    first = await leave_pending(redis, 2)
    await idle()
    claimed = await reclaimer.claim()
    assert [entry_id for entry_id, _ in claimed.entries] == first
    assert not claimed.more  # the pass wrapped: from now on, claim_idle_ms
    later = await leave_pending(redis, 1, consumer="dead-too")
    await idle()
    assert (await reclaimer.claim()).entries == []
    assert set(await owners(redis)) == {*first, *later}
