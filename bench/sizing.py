"""Redis memory per series and per sample, for sizing Redis (docs/operating.md, *Sizing Redis*).

    python -m bench.sizing [--devices 200] [--metrics 5] [--samples 10000]

On a private embedded Redis, with the product's default settings (its rollups, retention and
8 shards), through the worker's own code: ``ensure_series`` creates the series the way the
worker does on first sight of a (metric, device), and ``madd_command`` writes samples the way
it writes a batch (a device's raw series and its shard's partial of the metric in one TS.MADD).
Each figure is a delta of ``INFO memory`` ``used_memory`` divided by what was added:

* per device series: its raw series, rollup series, labels and rule (devices x metrics added
  once every metric's partials exist), and per metric: its partials (raw + the rollups that
  merge across shards, one set per shard);
* per event (one reading of one device): the device's raw sample, the partial's, and the
  rollup samples they feed, at 1 sample/s and at 1 sample/10 s, in compressed chunks, enough
  samples to fill several chunks, timestamps a device's period apart with a few ms of jitter
  and sensor-like values (a slow wave plus noise, 2 decimals);
* per rollup sample: a series written once per rollup bucket, what the rollups keep for
  INGEST_ROLLUP_RETENTION_MS (30 days) after the raw samples are gone.

Unlabelled and labelled (3 labels per series) devices are measured apart.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from bench.loadgen import log

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ingest_shared.keys import Keys
    from ingest_shared.settings import Settings
    from ingest_shared.timeseries import KnownSeries, SeriesLayout

LABELS = {"site": "plant-7", "line": "3", "unit": "celsius"}
CADENCES_S = (1, 10)
WRITE_BATCH = 2_000  # events per TS.MADD, about the worker's batches (500 entries x ~4)
JITTER_MS = 20


@dataclass(frozen=True, slots=True)
class SizingConfig:
    devices: int = 200
    metrics: int = 5
    samples: int = 10_000  # per device series, at each cadence (within the raw retention)
    sample_series: int = 100  # device series written to for the per-event figures


@dataclass(frozen=True, slots=True)
class Sizing:
    """The measured figures, in bytes."""

    labelled: bool
    per_series: float  # one device series: raw + rollups + labels + rules
    per_metric: float  # one metric's partials over every shard
    per_event: dict[int, float]  # cadence (s) -> one reading, with its share of partials
    per_rollup_sample: float
    rollups: tuple[str, ...]
    partial_rollups: tuple[str, ...]
    shards: int


async def _used(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


def _source(index: int, labelled: bool) -> str:
    from ingest_shared.keys import series_identity
    from ingest_shared.schema import canonical_labels, labels_digest

    source = f"device-{index}"
    return series_identity(source, labels_digest(canonical_labels(LABELS))) if labelled else source


async def _create(
    client: aioredis.Redis,
    keys: Keys,
    layout: SeriesLayout,
    pairs: Sequence[tuple[str, str]],
    labelled: bool,
) -> None:
    """The worker's series setup for ``pairs``, per shard as its owner would run it."""
    from ingest_shared.keys import identity_source
    from ingest_shared.timeseries import ensure_series

    by_shard: dict[int, list[tuple[str, str]]] = {}
    for metric, source in pairs:
        by_shard.setdefault(keys.shard_of_source(identity_source(source)).index, []).append(
            (metric, source)
        )
    for index, shard_pairs in by_shard.items():
        labels = {source: LABELS for _, source in shard_pairs} if labelled else None
        await ensure_series(client, keys, layout, shard_pairs, keys.shards[index], labels=labels)


async def _write(
    client: aioredis.Redis,
    keys: Keys,
    pairs: Sequence[tuple[str, str]],
    *,
    samples: int,
    cadence_s: int,
    labelled: bool,
) -> int:
    """``samples`` readings per pair, ``cadence_s`` apart, ending now; the events written."""
    import time

    from ingest_shared.keys import identity_source
    from ingest_shared.redis_client import call_packed
    from ingest_shared.schema import Sample
    from ingest_shared.timeseries import madd_command, packed_pair

    rng = random.Random(11)
    period = cadence_s * 1000
    start = time.time_ns() // 1_000_000 - samples * period - 60_000
    phases = [rng.randrange(period) for _ in pairs]
    labels = LABELS if labelled else None
    # Events are grouped per shard, as each shard's owner writes only its own.
    shards = [keys.shard_of_source(identity_source(source)) for _, source in pairs]
    known_by_shard: dict[int, KnownSeries] = {}
    for (metric, source), shard in zip(pairs, shards, strict=True):
        known = known_by_shard.setdefault(shard.index, {})
        known.setdefault(metric, {})[source] = packed_pair(keys, metric, source, shard)
    written = 0
    pending: dict[int, list[Sample]] = {}
    for i in range(samples):
        for n, (metric, source) in enumerate(pairs):
            ts = start + i * period + phases[n] + rng.randrange(JITTER_MS)
            value = round(20 + 5 * math.sin(ts / 600_000 + n) + rng.gauss(0, 0.2), 2)
            batch = pending.setdefault(shards[n].index, [])
            batch.append(Sample(metric, source, ts, value, labels))
            if len(batch) >= WRITE_BATCH:
                command, _ = madd_command(batch, known_by_shard[shards[n].index])
                await call_packed(client, command)
                written += len(batch)
                batch.clear()
    for index, batch in pending.items():
        if batch:
            command, _ = madd_command(batch, known_by_shard[index])
            await call_packed(client, command)
            written += len(batch)
    return written


async def _rollup_sample_bytes(client: aioredis.Redis, settings: Settings, count: int) -> float:
    """Bytes per sample of a series written once per rollup bucket (what a rollup holds)."""
    import time

    rollup = settings.keys.rollups[0]
    key = "sizing:rollup-like"
    await client.execute_command("TS.CREATE", key, "RETENTION", 0)  # type: ignore[no-untyped-call]
    before = await _used(client)
    rng = random.Random(5)
    start = time.time_ns() // 1_000_000 - count * rollup.bucket_ms
    args: list[str | int | float] = []
    for i in range(count):
        # An average of many readings: full precision, as the rule stores it.
        args += [key, start + i * rollup.bucket_ms, 20 + 5 * math.sin(i / 10) + rng.gauss(0, 0.03)]
    for first in range(0, len(args), 3 * WRITE_BATCH):
        await client.execute_command("TS.MADD", *args[first : first + 3 * WRITE_BATCH])  # type: ignore[no-untyped-call]
    return (await _used(client) - before) / count


async def measure(client: aioredis.Redis, settings: Settings, config: SizingConfig) -> list[Sizing]:
    """Both figures (unlabelled, then labelled) on ``client``'s empty database."""
    from ingest_shared.timeseries import SeriesLayout

    keys = settings.keys
    layout = SeriesLayout(
        retention_ms=settings.retention_ms, rollup_retention_ms=settings.rollup_retention_ms
    )
    per_rollup = await _rollup_sample_bytes(client, settings, max(2_000, config.samples))
    out = []
    for labelled in (False, True):
        await client.flushdb()
        metrics = [f"metric-{m}" for m in range(config.metrics)]
        # Enough devices that every shard has one: every metric's partials then exist.
        first = [_source(d, labelled) for d in range(4 * len(keys.shards))]
        before = await _used(client)
        await _create(client, keys, layout, [(m, s) for m in metrics for s in first], labelled)
        with_partials = await _used(client) - before
        more = [_source(d, labelled) for d in range(len(first), len(first) + config.devices)]
        pairs = [(m, s) for m in metrics for s in more]
        before = await _used(client)
        await _create(client, keys, layout, pairs, labelled)
        per_series = (await _used(client) - before) / len(pairs)
        per_metric = (with_partials - per_series * len(first) * len(metrics)) / len(metrics)
        per_event = {}
        written_pairs = pairs[: config.sample_series]
        for cadence in CADENCES_S:
            # Fresh series for each cadence: samples after the ones already there.
            offset = len(first) + config.devices * (1 + cadence)
            fresh = [
                (m, _source(offset + n, labelled))
                for n, m in enumerate(p[0] for p in written_pairs)
            ]
            await _create(client, keys, layout, fresh, labelled)
            samples = min(config.samples, settings.retention_ms // (cadence * 1000) - 120)
            before = await _used(client)
            events = await _write(
                client, keys, fresh, samples=samples, cadence_s=cadence, labelled=labelled
            )
            per_event[cadence] = (await _used(client) - before) / events
        out.append(
            Sizing(
                labelled=labelled,
                per_series=per_series,
                per_metric=per_metric,
                per_event=per_event,
                per_rollup_sample=per_rollup,
                rollups=tuple(r.name for r in keys.rollups),
                partial_rollups=tuple(r.name for r in keys.partial_rollups),
                shards=len(keys.shards),
            )
        )
        log(f"sizing {'labelled' if labelled else 'unlabelled'}: {asdict(out[-1])}")
    return out


def estimate(
    sizing: Sizing,
    settings: Settings,
    *,
    devices: int,
    metrics: int,
    rate_per_s: float,
) -> float:
    """Bytes for ``devices`` x ``metrics`` series each written ``rate_per_s`` times a second,
    at steady state (raw samples for INGEST_RETENTION_MS, rollups for the rollup retention)."""
    series = devices * metrics
    cadence = min(sizing.per_event, key=lambda c: abs(math.log(c * rate_per_s)))
    raw = series * rate_per_s * settings.retention_ms / 1000 * sizing.per_event[cadence]
    rollup_samples = (
        sum(settings.rollup_retention_ms / r.bucket_ms for r in settings.keys.rollups) * series
        + sum(settings.rollup_retention_ms / r.bucket_ms for r in settings.keys.partial_rollups)
        * metrics
        * sizing.shards
    )
    return (
        series * sizing.per_series
        + metrics * sizing.per_metric
        + raw
        + rollup_samples * sizing.per_rollup_sample
    )


def render(results: Sequence[Sizing], settings: Settings) -> str:
    """The Markdown table and a worked example."""
    first = results[0]
    lines = [
        f"Default settings: rollups {', '.join(first.rollups)} (partials: "
        f"{', '.join(first.partial_rollups)} per shard, {first.shards} shards), raw retention "
        f"{settings.retention_ms / 3_600_000:g} h, rollup retention "
        f"{settings.rollup_retention_ms / 86_400_000:g} days.",
        "",
        "| Series | Per device series (raw + rollups, labels, rule) | Per metric (its partials) "
        "| Per event at 1/s | Per event at 1/10 s | Per rollup sample |",
        "|---|---|---|---|---|---|",
    ]
    for s in results:
        kind = f"labelled ({len(LABELS)} labels)" if s.labelled else "unlabelled"
        lines.append(
            f"| {kind} | {s.per_series / 1024:,.1f} KiB | {s.per_metric / 1024:,.1f} KiB "
            f"| {s.per_event[1]:,.1f} B | {s.per_event[10]:,.1f} B | {s.per_rollup_sample:,.1f} B |"
        )
    example = dict(devices=1_000, metrics=20, rate_per_s=0.1)
    total = estimate(first, settings, **example)  # type: ignore[arg-type]
    lines += [
        "",
        "Redis memory ~ N x M x per-series + M x per-metric + N x M x R x raw retention (s) x "
        "per-event + (N x M + M x shards x 2) x (rollup retention / bucket) x per-rollup-sample.",
        f"Example: 1,000 devices x 20 metrics at one sample per 10 s, unlabelled: "
        f"{total / 2**30:,.2f} GiB (`bench.sizing.estimate`).",
    ]
    return "\n".join(lines)


async def run_sizing(config: SizingConfig, workdir: Path | None = None) -> list[Sizing]:
    """Measure on a private embedded Redis (the product's default settings)."""
    from ingest_devtools.localredis import LocalRedis
    from ingest_shared.settings import load_settings

    settings = load_settings({})
    with tempfile.TemporaryDirectory(prefix="sizing-", dir=workdir) as tmp:
        server = LocalRedis(data_dir=Path(tmp), appendonly=False)
        with server:
            client = aioredis.Redis(host="127.0.0.1", port=server.port, socket_timeout=120)
            try:
                return await measure(client, settings, config)
            finally:
                await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    from ingest_shared.settings import load_settings

    defaults = SizingConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.sizing", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--metrics", type=int, default=defaults.metrics)
    parser.add_argument("--samples", type=int, default=defaults.samples)
    args = parser.parse_args(argv)
    config = SizingConfig(devices=args.devices, metrics=args.metrics, samples=args.samples)
    results = asyncio.run(run_sizing(config))
    print(render(results, load_settings({})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
