"""The batch processor against a real Redis: what is stored, dead-lettered and acked."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import pytest

from ingest_shared import keys as k
from ingest_shared.exceptions import TransientStoreError
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from ingest_shared.processor import BatchProcessor
    from ingest_shared.streams import Entry

CONSUMER = "test-worker"
# One stream (the unsharded layout): these tests drive the processor of its only shard.
SETTINGS = Settings(rollup_bucket_ms=1_000, consumer_name=CONSUMER, stream_shards=1)
KEYS = SETTINGS.keys
SHARD = KEYS.shards[0]
PER_METRIC_SUM = k.Rollup("sum", 1_000)
PER_METRIC_COUNT = k.Rollup("count", 1_000)
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group
# A minute ago, on a bucket boundary: inside retention and clock skew, and on its own bucket.
BASE_MS = (now_ms() - 60_000) // 1_000 * 1_000


@pytest.fixture
async def processor(redis: Redis) -> BatchProcessor:
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    return create_processor(redis, SETTINGS)


def event(
    metric: str = "cpu", source: str = "sensor-a", value: str = "12.5", at_ms: int = BASE_MS
) -> dict[bytes, bytes]:
    return {
        k.FIELD_SOURCE: source.encode(),
        k.FIELD_METRIC: metric.encode(),
        k.FIELD_VALUE: value.encode(),
        k.FIELD_OCCURRED_AT: format_ms(at_ms).encode(),
    }


async def enqueue_and_read(redis: Redis, *entries: dict[bytes, bytes]) -> list[Entry]:
    for fields in entries:
        await call(redis, "XADD", STREAM, "*", *itertools.chain.from_iterable(fields.items()))
    return await read(redis, ">")


async def read(redis: Redis, after: str) -> list[Entry]:
    reply = await call(redis, "XREADGROUP", "GROUP", GROUP, CONSUMER, "STREAMS", STREAM, after)
    batch: list[Entry] = reply[0][1]
    return batch


async def samples(redis: Redis, key: str) -> list[tuple[int, float]]:
    reply = await call(redis, "TS.RANGE", key, "-", "+")
    return [(int(ts), float(value)) for ts, value in reply]


async def pending(redis: Redis) -> int:
    summary = await redis.xpending(STREAM, GROUP)
    return int(summary["pending"])


async def dead_letters(redis: Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await call(redis, "XRANGE", KEYS.dead_letter, "-", "+")]


async def ts_info(redis: Redis, key: str) -> dict[bytes, Any]:
    # redis-py parses TS.INFO into a dict (labels and rules included).
    info: dict[bytes, Any] = await call(redis, "TS.INFO", key)
    return info


async def test_valid_events_are_stored_per_metric_and_per_source_then_acked(
    redis: Redis, processor: BatchProcessor
) -> None:
    batch = await enqueue_and_read(
        redis,
        event(source="sensor-a", value="1.5", at_ms=BASE_MS),
        event(source="sensor-b", value="2.5", at_ms=BASE_MS + 1),
    )

    result = await processor.process(batch, CONSUMER)

    assert (result.read, result.processed, result.dead_lettered, result.acked) == (2, 2, 0, 2)
    assert await samples(redis, KEYS.raw("cpu")) == [(BASE_MS, 1.5), (BASE_MS + 1, 2.5)]
    assert await samples(redis, KEYS.source_raw("cpu", "sensor-a")) == [(BASE_MS, 1.5)]
    assert await samples(redis, KEYS.source_raw("cpu", "sensor-b")) == [(BASE_MS + 1, 2.5)]
    assert await pending(redis) == 0
    assert await dead_letters(redis) == []


GARBAGE = {
    "missing value": (
        {b"source": b"sensor-a", b"metric": b"cpu"},
        "value: missing",
    ),
    "value not a number": (
        {b"source": b"sensor-a", b"metric": b"cpu", b"value": b"twelve"},
        "value",
    ),
    "value nan": (
        {b"source": b"sensor-a", b"metric": b"cpu", b"value": b"nan"},
        "value",
    ),
    "invalid utf-8": (
        {b"source": b"sensor-\xff", b"metric": b"cpu", b"value": b"1"},
        "UTF-8",
    ),
    "metric with a brace": (
        {b"source": b"sensor-a", b"metric": b"cpu}x", b"value": b"1"},
        "metric",
    ),
    "occurredAt in the future": (
        event(at_ms=now_ms() + 3_600_000),
        "in the future",
    ),
    "occurredAt not a date": (
        {b"source": b"sensor-a", b"metric": b"cpu", b"value": b"1", b"occurredAt": b"soon"},
        "occurredAt",
    ),
}


@pytest.mark.parametrize(("fields", "reason_part"), GARBAGE.values(), ids=GARBAGE.keys())
async def test_invalid_entry_is_dead_lettered_with_its_payload_and_acked(
    redis: Redis, processor: BatchProcessor, fields: dict[bytes, bytes], reason_part: str
) -> None:
    batch = await enqueue_and_read(redis, fields, event(value="7"))

    result = await processor.process(batch, CONSUMER)

    assert (result.processed, result.dead_lettered, result.acked) == (1, 1, 2)
    [letter] = await dead_letters(redis)
    assert set(letter) == {b"messageId", b"reason", b"payload", b"consumer", b"failedAt"}
    assert letter[b"messageId"] == batch[0][0]
    assert reason_part in letter[b"reason"].decode()
    assert letter[b"payload"].startswith(b"{")
    assert letter[b"consumer"] == CONSUMER.encode()
    assert letter[b"failedAt"].endswith(b"Z")
    assert await samples(redis, KEYS.raw("cpu")) == [(BASE_MS, 7.0)]
    assert await pending(redis) == 0


async def test_duplicate_reading_keeps_the_last_value(
    redis: Redis, processor: BatchProcessor
) -> None:
    first = await enqueue_and_read(redis, event(value="1"), event(value="2"))
    await processor.process(first, CONSUMER)
    again = await enqueue_and_read(redis, event(value="3"))

    result = await processor.process(again, CONSUMER)

    assert result.dead_lettered == 0
    assert await samples(redis, KEYS.source_raw("cpu", "sensor-a")) == [(BASE_MS, 3.0)]
    assert await samples(redis, KEYS.raw("cpu")) == [(BASE_MS, 3.0)]


async def test_two_sources_in_the_same_millisecond_are_both_kept_in_their_series(
    redis: Redis, processor: BatchProcessor
) -> None:
    batch = await enqueue_and_read(
        redis, event(source="sensor-a", value="1"), event(source="sensor-b", value="2")
    )

    await processor.process(batch, CONSUMER)

    assert await samples(redis, KEYS.source_raw("cpu", "sensor-a")) == [(BASE_MS, 1.0)]
    assert await samples(redis, KEYS.source_raw("cpu", "sensor-b")) == [(BASE_MS, 2.0)]
    # The per-metric series is the tutorial's: one sample per millisecond, the last one.
    assert await samples(redis, KEYS.raw("cpu")) == [(BASE_MS, 2.0)]


async def test_new_metric_gets_raw_and_rollup_series_a_rule_and_joins_the_metrics_set(
    redis: Redis, processor: BatchProcessor
) -> None:
    batch = await enqueue_and_read(redis, event(metric="disk.io", source="sensor-a"))

    await processor.process(batch, CONSUMER)

    # The shard's partial of the per-metric series carries what an average merges from.
    raw = await ts_info(redis, KEYS.metric_raw("disk.io", SHARD))
    assert {dest: rule[:2] for dest, rule in raw[b"rules"].items()} == {
        KEYS.metric_rollup_of("disk.io", SHARD, PER_METRIC_SUM).encode(): [1_000, b"SUM"],
        KEYS.metric_rollup_of("disk.io", SHARD, PER_METRIC_COUNT).encode(): [1_000, b"COUNT"],
    }
    assert raw[b"duplicatePolicy"] == b"last"
    assert raw[b"retentionTime"] == SETTINGS.retention_ms
    assert raw[b"labels"] == {b"metric": b"disk.io", b"shard": b"0", b"kind": b"raw"}
    source_raw = await ts_info(redis, KEYS.source_raw("disk.io", "sensor-a"))
    assert list(source_raw[b"rules"]) == [KEYS.source_rollup("disk.io", "sensor-a").encode()]
    assert source_raw[b"labels"] == {
        b"metric": b"disk.io",
        b"source": b"sensor-a",
        b"kind": b"source-raw",
    }
    rollup = await ts_info(redis, KEYS.metric_rollup_of("disk.io", SHARD, PER_METRIC_SUM))
    assert rollup[b"sourceKey"] == KEYS.metric_raw("disk.io", SHARD).encode()
    assert await redis.smembers(KEYS.metrics) == {b"disk.io"}


async def test_rollup_value_appears_once_its_bucket_closes(
    redis: Redis, processor: BatchProcessor
) -> None:
    in_bucket = await enqueue_and_read(
        redis, event(value="1", at_ms=BASE_MS + 100), event(value="3", at_ms=BASE_MS + 600)
    )
    await processor.process(in_bucket, CONSUMER)
    per_metric_sum = KEYS.metric_rollup_of("cpu", SHARD, PER_METRIC_SUM)
    assert await samples(redis, per_metric_sum) == []

    next_bucket = await enqueue_and_read(redis, event(value="10", at_ms=BASE_MS + 1_500))
    await processor.process(next_bucket, CONSUMER)

    assert await samples(redis, per_metric_sum) == [(BASE_MS, 4.0)]
    count = KEYS.metric_rollup_of("cpu", SHARD, PER_METRIC_COUNT)
    assert await samples(redis, count) == [(BASE_MS, 2.0)]
    assert await samples(redis, KEYS.source_rollup("cpu", "sensor-a")) == [(BASE_MS, 2.0)]


async def test_series_created_elsewhere_with_block_policy_still_takes_a_duplicate(
    redis: Redis, processor: BatchProcessor
) -> None:
    key = KEYS.source_raw("cpu", "sensor-a")
    await call(redis, "TS.CREATE", key, "DUPLICATE_POLICY", "BLOCK")
    await call(redis, "TS.ADD", key, BASE_MS, 1)
    batch = await enqueue_and_read(redis, event(value="2"), event(value="4", at_ms=BASE_MS + 1))

    result = await processor.process(batch, CONSUMER)

    assert (result.processed, result.dead_lettered, result.acked) == (2, 0, 2)
    assert await samples(redis, key) == [(BASE_MS, 2.0), (BASE_MS + 1, 4.0)]


async def test_sample_older_than_a_series_retention_is_dead_lettered_with_the_tsdb_reason(
    redis: Redis, processor: BatchProcessor
) -> None:
    # Created by someone else with a one-second retention: the schema's window cannot know.
    key = KEYS.raw("cpu")
    await call(redis, "TS.CREATE", key, "RETENTION", 1_000, "DUPLICATE_POLICY", "LAST")
    await call(redis, "TS.ADD", key, BASE_MS + 50_000, 1)
    batch = await enqueue_and_read(redis, event(value="5", at_ms=BASE_MS))

    result = await processor.process(batch, CONSUMER)

    assert (result.processed, result.dead_lettered, result.acked) == (0, 1, 1)
    [letter] = await dead_letters(redis)
    assert letter[b"reason"] == b"TSDB: Timestamp is older than retention"
    assert await pending(redis) == 0


async def test_entry_deleted_while_pending_is_acked_without_a_dead_letter(
    redis: Redis, processor: BatchProcessor
) -> None:
    [(entry_id, _)] = await enqueue_and_read(redis, event())
    await redis.xdel(STREAM, entry_id)
    batch = await read(redis, "0")

    result = await processor.process(batch, CONSUMER)

    assert (result.read, result.processed, result.dead_lettered, result.acked) == (1, 0, 0, 1)
    assert await dead_letters(redis) == []
    assert await pending(redis) == 0


async def test_forced_entry_is_dead_lettered_without_being_stored(
    redis: Redis, processor: BatchProcessor
) -> None:
    batch = await enqueue_and_read(redis, event(value="1"), event(source="sensor-b", value="2"))

    result = await processor.process(batch, CONSUMER, forced={batch[0][0]: "max deliveries"})

    assert (result.processed, result.dead_lettered, result.acked) == (1, 1, 2)
    [letter] = await dead_letters(redis)
    assert (letter[b"messageId"], letter[b"reason"]) == (batch[0][0], b"max deliveries")
    assert await samples(redis, KEYS.raw("cpu")) == [(BASE_MS, 2.0)]


@contextlib.asynccontextmanager
async def out_of_memory(redis: Redis) -> AsyncIterator[None]:
    """Make every write fail with OOM, as a full Redis does; restored even if the test fails."""
    policy = str((await redis.config_get("maxmemory-policy"))["maxmemory-policy"])
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    try:
        yield
    finally:
        await redis.config_set("maxmemory", 0)
        await redis.config_set("maxmemory-policy", policy)


@pytest.mark.parametrize(
    "setup",
    ["new series", "existing series", "dead letter only"],
)
async def test_transient_store_error_acks_nothing_and_a_retry_stores_the_batch(
    redis: Redis, processor: BatchProcessor, setup: str
) -> None:
    if setup == "existing series":
        await processor.process(await enqueue_and_read(redis, event(value="0")), CONSUMER)
    fields = event(value="6", at_ms=BASE_MS + 1)
    if setup == "dead letter only":
        fields = {b"garbage": b"1"}
    batch = await enqueue_and_read(redis, fields)

    async with out_of_memory(redis):
        with pytest.raises(TransientStoreError):
            await processor.process(batch, CONSUMER)
        assert await pending(redis) == 1

    result = await processor.process(batch, CONSUMER)

    assert result.acked == 1
    assert await pending(redis) == 0
    if setup == "dead letter only":
        assert len(await dead_letters(redis)) == 1
    else:
        assert (BASE_MS + 1, 6.0) in await samples(redis, KEYS.raw("cpu"))
