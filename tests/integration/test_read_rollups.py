"""Configurable rollups on the write side: one series and rule per rollup (a metric's
per-shard partial: one per part the rollups merge from), added to existing series when the
setting changes; and the dead-letter stream's cap."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from tests.readside import RecordingConnection

from ingest_shared import keys as k
from ingest_shared.keys import Rollup
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from ingest_shared.streams import Entry

BASE_MS = (now_ms() - 600_000) // 60_000 * 60_000
AVG, MAX, HOURLY = Rollup("avg", 60_000), Rollup("max", 60_000), Rollup("avg", 3_600_000)
# The processors here are the first shard's (create_processor's default); every Settings in
# this file has the default shard count.
SHARD = Settings().keys.shards[0]
STREAM, GROUP = SHARD.stream, Settings().consumer_group


def event(metric: str = "cpu", source: str = "sensor-a", value: str = "1", at: int = 0) -> Any:
    return {
        k.FIELD_SOURCE: source,
        k.FIELD_METRIC: metric,
        k.FIELD_VALUE: value,
        k.FIELD_OCCURRED_AT: format_ms(at or BASE_MS),
    }


async def enqueue_and_read(redis: Redis, *events: dict[bytes, str]) -> list[Entry]:
    for fields in events:
        pairs: list[bytes | str] = list(itertools.chain.from_iterable(fields.items()))
        await call(redis, "XADD", STREAM, "*", *pairs)
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    reply = await call(redis, "XREADGROUP", "GROUP", GROUP, "c", "STREAMS", STREAM, ">")
    batch: list[Entry] = reply[0][1]
    await redis.delete(STREAM)  # the next call reads only its own entries
    return batch


async def process(redis: Redis, settings: Settings, *events: dict[bytes, str]) -> None:
    batch = await enqueue_and_read(redis, *events)
    result = await create_processor(redis, settings).process(batch, "c")
    assert result.processed == len(batch)


async def rules(redis: Redis, key: str) -> dict[str, list[Any]]:
    info = await call(redis, "TS.INFO", key)
    return {dest.decode(): [rule[0], rule[1].decode()] for dest, rule in info[b"rules"].items()}


async def labels(redis: Redis, key: str) -> dict[bytes, bytes]:
    info = await call(redis, "TS.INFO", key)
    found: dict[bytes, bytes] = info[b"labels"]
    return found


async def test_every_rollup_gets_a_series_and_a_rule_with_labels(redis: Redis) -> None:
    settings = Settings(rollups=(AVG, MAX, HOURLY))
    keys = settings.keys

    await process(redis, settings, event())

    # The metric's partial carries what the rollups merge from: avg as sum and count.
    parts = {
        Rollup("sum", 60_000): "SUM",
        Rollup("count", 60_000): "COUNT",
        MAX: "MAX",
        Rollup("sum", 3_600_000): "SUM",
        Rollup("count", 3_600_000): "COUNT",
    }
    assert await rules(redis, keys.metric_raw("cpu", SHARD)) == {
        keys.metric_rollup_of("cpu", SHARD, part): [part.bucket_ms, agg]
        for part, agg in parts.items()
    }
    assert await rules(redis, keys.source_raw("cpu", "sensor-a")) == {
        keys.source_rollup_of("cpu", "sensor-a", r): [r.bucket_ms, r.agg.upper()]
        for r in (AVG, MAX, HOURLY)
    }
    assert await labels(redis, keys.source_rollup_of("cpu", "sensor-a", MAX)) == {
        b"metric": b"cpu",
        b"source": b"sensor-a",
        b"kind": b"source-rollup",
        b"agg": b"max",
        b"bucketMs": b"60000",
    }
    assert await labels(redis, keys.metric_rollup_of("cpu", SHARD, Rollup("count", 3_600_000))) == {
        b"metric": b"cpu",
        b"shard": b"0",
        b"kind": b"rollup",
        b"agg": b"count",
        b"bucketMs": b"3600000",
    }
    assert await labels(redis, keys.metric_raw("cpu", SHARD)) == {
        b"metric": b"cpu",
        b"shard": b"0",
        b"kind": b"raw",
    }


async def test_a_rollup_added_later_is_created_for_existing_series_on_first_sight(
    redis: Redis,
) -> None:
    before, after = Settings(rollups=(AVG,)), Settings(rollups=(AVG, MAX))
    minute = [BASE_MS + i * 60_000 for i in range(4)]
    await process(redis, before, event(value="5", at=minute[0]), event(value="6", at=minute[1]))

    await process(redis, after, event(value="7", at=minute[2]))
    await process(redis, after, event(value="1", at=minute[3]))  # closes minute 2

    keys = after.keys
    assert set(await rules(redis, keys.source_raw("cpu", "sensor-a"))) == {
        keys.source_rollup_of("cpu", "sensor-a", AVG),
        keys.source_rollup_of("cpu", "sensor-a", MAX),
    }
    # Only samples written after the rule was created: minutes 0 and 1 are not in it.
    maxima = await call(redis, "TS.RANGE", keys.source_rollup_of("cpu", "sensor-a", MAX), "-", "+")
    assert [(int(t), float(v)) for t, v in maxima] == [(minute[2], 7.0)]


async def test_a_removed_rollup_leaves_its_series_and_rule_alone(redis: Redis) -> None:
    both, fewer = Settings(rollups=(AVG, MAX)), Settings(rollups=(MAX,))
    await process(redis, both, event())

    await process(redis, fewer, event(source="sensor-b"), event(at=BASE_MS + 1))

    keys = both.keys
    assert set(await rules(redis, keys.source_raw("cpu", "sensor-a"))) == {
        keys.source_rollup_of("cpu", "sensor-a", AVG),
        keys.source_rollup_of("cpu", "sensor-a", MAX),
    }
    assert set(await rules(redis, keys.source_raw("cpu", "sensor-b"))) == {
        keys.source_rollup_of("cpu", "sensor-b", MAX)
    }


async def test_series_setup_runs_once_per_pair_per_process(redis: Redis, redis_url: str) -> None:
    settings = Settings(rollups=(AVG, MAX, HOURLY))
    recording = Redis.from_url(redis_url, connection_class=RecordingConnection)
    processor = create_processor(recording, settings)
    try:
        for at in (BASE_MS, BASE_MS + 1):
            batch = await enqueue_and_read(redis, event(at=at))
            RecordingConnection.reset()
            await processor.process(batch, "c")
            sent = b"".join(RecordingConnection.sent)
            if at == BASE_MS:
                # 5 parts on the metric's partial, 3 rollups on the (metric, source) pair
                assert sent.count(b"TS.CREATERULE") == 8
            else:
                assert b"TS.CREATE" not in sent
    finally:
        await recording.aclose()


@pytest.mark.parametrize("maxlen", [100])
async def test_dead_letters_are_capped_near_the_maxlen(redis: Redis, maxlen: int) -> None:
    settings = Settings(dead_letter_maxlen=maxlen)
    garbage = [{k.FIELD_METRIC: "cpu", k.FIELD_VALUE: "not a number"} for _ in range(1_000)]
    batch = await enqueue_and_read(redis, *garbage)

    result = await create_processor(redis, settings).process(batch, "c")

    assert result.dead_lettered == 1_000
    length = await redis.xlen(SHARD.dead_letter)
    # Approximate trimming drops whole stream nodes (100 entries each by default).
    assert maxlen <= length < maxlen + 200
