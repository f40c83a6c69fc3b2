"""The worker's fast paths against a real Redis: hand-packed commands and the series cache.

TS.MADD and XACK are packed in RESP by our code rather than by redis-py; these tests check
that the bytes are exactly redis-py's, that replies and errors come back the same way, and
that a cancelled command cannot leave a stale reply on a pooled connection.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from ingest_shared import keys as k
from ingest_shared import processor as processor_module
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call, call_packed, create_redis, pack
from ingest_shared.schema import Sample, format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.timeseries import madd_command, packed_pair, series_pair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from ingest_shared.streams import Entry
    from ingest_shared.timeseries import KnownSeries

CONSUMER = "perf-paths"
SETTINGS = Settings(consumer_name=CONSUMER, stream_shards=1)  # one stream, one processor
KEYS = SETTINGS.keys
SHARD = KEYS.shards[0]
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group
BASE_MS = (now_ms() - 60_000) // 1_000 * 1_000


def redis_py_packed(*args: bytes | str | int | float) -> bytes:
    return b"".join(Connection().pack_command(*args))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    """A client as the services create it (the ``redis`` fixture is only for checks)."""
    client = create_redis(redis_url, socket_timeout=5.0)
    yield client
    await client.aclose()


async def enqueue_and_read(redis: Redis, *entries: dict[bytes, bytes]) -> list[Entry]:
    for fields in entries:
        await call(redis, "XADD", STREAM, "*", *itertools.chain.from_iterable(fields.items()))
    reply = await call(redis, "XREADGROUP", "GROUP", GROUP, CONSUMER, "STREAMS", STREAM, ">")
    batch: list[Entry] = reply[0][1]
    return batch


def event(metric: str, source: str, value: str = "1.5", at_ms: int = BASE_MS) -> dict[bytes, bytes]:
    return {
        k.FIELD_SOURCE: source.encode(),
        k.FIELD_METRIC: metric.encode(),
        k.FIELD_VALUE: value.encode(),
        k.FIELD_OCCURRED_AT: format_ms(at_ms).encode(),
    }


def test_madd_command_is_byte_for_byte_what_redis_py_would_send() -> None:
    samples = [
        Sample("cpu", "sensor-a", BASE_MS, 12.5),
        Sample("cpu", "sensor-b", BASE_MS + 1, -1e-300),
        Sample("mem.used", "host:1/@x", 0, 1.7976931348623157e308),
    ]
    known: KnownSeries = {}
    for s in samples:
        known.setdefault(s.metric, {})[s.source] = packed_pair(KEYS, s.metric, s.source, SHARD)
    # Nothing to collapse here; collapsing also puts the per-metric elements in time order.
    for collapse, per_metric in (
        (True, sorted(samples, key=lambda s: s.timestamp_ms)),
        (False, samples),
    ):
        expected = ["TS.MADD"]
        for metric, source, ts, value, _ in samples:  # the per-device elements first ...
            expected += [series_pair(KEYS, metric, source, SHARD)[1], ts, value]  # type: ignore[list-item]
        for metric, source, ts, value, _ in per_metric:  # ... then the per-metric ones
            expected += [series_pair(KEYS, metric, source, SHARD)[0], ts, value]  # type: ignore[list-item]
        command, elements = madd_command(samples, known, collapse=collapse)
        assert command == redis_py_packed(*expected)
        assert elements == [(known[s.metric][s.source][0], s.timestamp_ms) for s in per_metric]


def test_madd_command_writes_one_per_metric_sample_per_timestamp_the_last() -> None:
    samples = [
        Sample("cpu", "a", BASE_MS, 1.0),
        Sample("cpu", "b", BASE_MS, 2.0),
        Sample("cpu", "c", BASE_MS + 1, 3.0),
        Sample("cpu", "d", BASE_MS, 4.0),
    ]
    known: KnownSeries = {
        "cpu": {s.source: packed_pair(KEYS, "cpu", s.source, SHARD) for s in samples}
    }
    command, elements = madd_command(samples, known)
    raw = series_pair(KEYS, "cpu", "a", SHARD)[0]
    expected = ["TS.MADD"]
    for s in samples:
        expected += [series_pair(KEYS, "cpu", s.source, SHARD)[1], s.timestamp_ms, s.value]  # type: ignore[list-item]
    expected += [raw, BASE_MS, 4.0, raw, BASE_MS + 1, 3.0]  # type: ignore[list-item]
    assert command == redis_py_packed(*expected)
    assert [ts for _, ts in elements] == [BASE_MS, BASE_MS + 1]


def test_madd_command_needs_every_pair_to_be_known() -> None:
    with pytest.raises(KeyError):
        madd_command([Sample("cpu", "new-source", BASE_MS, 1.0)], {"cpu": {}})


def test_pack_is_byte_for_byte_what_redis_py_would_send() -> None:
    args = [b"XACK", b"telemetry:events", b"workers", b"1-0", b"", b"17\r\n"]
    assert pack(*args) == redis_py_packed(*args)


async def test_packed_call_returns_per_element_errors_in_the_reply(
    client: Redis, redis: Redis
) -> None:
    await call(redis, "TS.CREATE", "ts:a", "DUPLICATE_POLICY", "LAST")
    await call(redis, "SET", "plain", "x")
    command = pack(b"TS.MADD", b"ts:a", b"1000", b"1.5", b"plain", b"1000", b"2.5")
    first, second = await call_packed(client, command)
    assert first == 1000
    assert isinstance(second, ResponseError)


async def test_packed_call_raises_an_error_reply(client: Redis, redis: Redis) -> None:
    await call(redis, "SET", "plain", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await call_packed(client, pack(b"XACK", b"plain", b"group", b"1-0"))


async def test_cancelled_packed_call_leaves_no_stale_reply_on_the_pool(
    client: Redis, redis: Redis
) -> None:
    blocked = asyncio.create_task(
        call_packed(client, pack(b"XREAD", b"BLOCK", b"300", b"STREAMS", b"empty", b"$"))
    )
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await redis.xadd("empty", {"f": "v"})  # would have been the blocked XREAD's reply
    await asyncio.sleep(0.3)
    for _ in range(3):  # whichever pooled connection comes back, its next reply is its own
        assert await call_packed(client, pack(b"ECHO", b"mine")) == b"mine"


async def test_series_cache_reset_still_sets_up_and_stores_the_whole_batch(
    client: Redis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "_KNOWN_SERIES_LIMIT", 2)
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    processor = create_processor(client, SETTINGS)
    pairs = [("cpu", "a"), ("cpu", "b"), ("mem", "a")]
    for at_ms in (BASE_MS, BASE_MS + 1):  # the second batch overflows the cache again
        entries = await enqueue_and_read(redis, *(event(m, s, at_ms=at_ms) for m, s in pairs))
        result = await processor.process(entries, CONSUMER)
        assert (result.processed, result.dead_lettered, result.acked) == (3, 0, 3)
    for metric, source in pairs:
        raw, source_raw = series_pair(KEYS, metric, source, SHARD)
        assert await call(redis, "TS.GET", source_raw) == [BASE_MS + 1, 1.5]
        assert (await call(redis, "TS.GET", raw))[0] == BASE_MS + 1
    assert await redis.xpending(STREAM, GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
