"""Collapsing same-timestamp per-metric samples in a batch changes nothing that is stored."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from ingest_shared import keys as k
from ingest_shared.keys import Rollup
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ingest_shared.streams import Entry

METRICS = ("cpu", "mem", "temp")
SOURCES = ("gw-1", "gw-2", "dev-a", "dev-b", "dev-c")
ROLLUPS = (Rollup("avg", 1_000), Rollup("max", 1_000), Rollup("count", 5_000))


def gateway_batches(seed: int, base: int) -> list[list[Entry]]:
    """Batches as gateways make them: server-defaulted times, so many events of one metric in
    one millisecond; a few repeats of one device's reading; times crossing rollup buckets.
    ``base`` is a whole second, the same for every call that must give the same batches."""
    rng = random.Random(seed)
    batches: list[list[Entry]] = []
    serial = 0
    for batch in range(12):
        entries: list[Entry] = []
        for _ in range(rng.randint(40, 120)):
            serial += 1
            at = base + batch * 700 + rng.choice((0, 0, 0, 1, 2, 350))
            fields = {
                k.FIELD_SOURCE: rng.choice(SOURCES).encode(),
                k.FIELD_METRIC: rng.choice(METRICS).encode(),
                k.FIELD_VALUE: repr(round(rng.uniform(-50, 50), 3)).encode(),
                k.FIELD_OCCURRED_AT: format_ms(at).encode(),
            }
            entries.append((b"%d-%d" % (base, serial), fields))
        batches.append(entries)
    return batches


async def every_series(redis: Redis, prefix: str) -> dict[str, list[list[object]]]:
    """Every series under ``prefix``, keyed without the prefix: all samples."""
    found = {}
    for key in await redis.keys(f"{prefix}:*"):
        name = key.decode() if isinstance(key, bytes) else key
        found[name.removeprefix(prefix)] = await call(redis, "TS.RANGE", name, "-", "+")
    return found


async def test_series_and_rollups_end_identical_with_and_without_collapsing(
    redis: Redis,
) -> None:
    stored: dict[bool, dict[str, list[list[object]]]] = {}
    base = (now_ms() - 120_000) // 1_000 * 1_000
    for collapse in (True, False):
        prefix = f"telemetry:ts-{'collapsed' if collapse else 'plain'}"
        settings = replace(Settings(), series_prefix=prefix, rollups=ROLLUPS, stream_shards=1)
        processor = create_processor(redis, settings)
        processor._collapse = collapse
        for batch in gateway_batches(seed=7, base=base):
            result = await processor.process(batch, "test")
            assert (result.processed, result.dead_lettered) == (len(batch), 0)
        stored[collapse] = await every_series(redis, prefix)

    collapsed, plain = stored[True], stored[False]
    per_metric = 1 + len(settings.keys.partial_rollups)  # the partial and its parts
    per_device = 1 + len(ROLLUPS)
    assert len(collapsed) == len(METRICS) * (per_metric + len(SOURCES) * per_device)
    assert collapsed == plain
    # The batches did hold many same-millisecond samples of one metric.
    raw_cpu = collapsed[":{cpu}:raw"]
    cpu_events = [
        f
        for batch in gateway_batches(seed=7, base=base)
        for _, f in batch
        if f and f[k.FIELD_METRIC] == b"cpu"
    ]
    assert len(raw_cpu) < len(cpu_events)
