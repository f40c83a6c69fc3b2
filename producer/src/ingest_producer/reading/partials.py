"""The per-metric (fleet) series read back: its per-shard partials merged at query time.

Each shard's owner writes its own partial of a metric's series (``Keys.metric_raw``, labelled
``shard``), which carries the *parts* of the configured rollups (``Keys.partial_rollups``:
avg as sum + count, range as max + min). Earlier releases kept one series per metric (no
``shard`` label) with the configured rollups themselves; its samples are older than any
partial's. This module is the only reader that knows either layout; everyone else asks it.

Two round trips whatever the number of metrics, shards or devices, each one pipeline per node
(``fanout.fan_out``):

1. TS.MGET of every ``kind=raw`` series (a metric's newest sample is the newest across its
   series) and of every ``kind=rollup`` series (each one's latest closed bucket);
2. per configured rollup and metric, T = the newest bucket any partial has closed; bucket T
   of every partial is read with ``TS.MRANGE T T LATEST ... GROUPBY metric REDUCE``, one
   command per (part, bucket, T) whatever the number of metrics sharing that T, and the
   parts combine as ``aggregates.FLEET_PLANS`` say (avg = sum of sums / sum of counts).

first, last and std.p have no parts (``ingest_shared.keys.MERGE_PARTS``): always None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from ingest_producer.reading import aggregates
from ingest_producer.reading.fanout import Options, Reducer, by_label, fan_out, mget, mrange
from ingest_shared import keys as k
from ingest_shared.keys import Rollup
from ingest_shared.schema import METRIC_PATTERN, NAME_MAX

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from ingest_producer.reading.fanout import FilterQuery
    from ingest_producer.reading.replies import Sample, Series
    from ingest_shared.keys import Keys
    from ingest_shared.redis_client import RedisClient

_ROLLUP_LABELS = (k.LABEL_METRIC, k.LABEL_SHARD, k.LABEL_AGG, k.LABEL_BUCKET_MS)
_METRIC_NAME = re.compile(METRIC_PATTERN)


@dataclass(frozen=True, slots=True)
class MetricLatest:
    """A metric's newest raw sample and, by rollup name, the latest closed bucket of each
    configured rollup merged across partials (None: none yet, or first/last/std.p)."""

    raw: Sample | None = None
    rollups: Mapping[str, Sample | None] = field(default_factory=dict)


# What a metric without any per-metric series has.
NOTHING = MetricLatest()


def _metric_terms(metrics: Collection[str] | None) -> list[str]:
    """FILTER terms picking ``metrics`` (names already checked with the Metric rule, which
    allows no ``,``, ``(`` or ``)``); None picks every metric."""
    if metrics is None:
        return []
    if len(metrics) == 1:
        return [f"{k.LABEL_METRIC}={next(iter(metrics))}"]
    return [f"{k.LABEL_METRIC}=({','.join(sorted(metrics))})"]


def newest_raw_query(metrics: Collection[str] | None = None) -> FilterQuery:
    """TS.MGET of every per-metric raw series (partials, and an earlier release's series) of
    ``metrics`` (None: every metric), for :func:`newest_raw`; ``metrics`` must not be empty."""
    return mget([*_metric_terms(metrics), f"{k.LABEL_KIND}={k.KIND_RAW}"], [k.LABEL_METRIC])


def newest_raw(series: Sequence[Series]) -> dict[str, Sample | None]:
    """Metric -> its newest sample across all its series (the answer to
    :func:`newest_raw_query`, or any TS.MGET selecting the metric label); None for a metric
    whose series are all empty."""
    newest: dict[str, Sample | None] = {}
    for item in series:
        metric = item.labels.get(k.LABEL_METRIC)
        if metric is None:
            continue
        known = newest.get(metric)
        sample = item.samples[0] if item.samples else None
        if known is None or (sample is not None and sample[0] > known[0]):
            newest[metric] = sample
    return newest


def _mergeable(keys: Keys) -> list[Rollup]:
    return [rollup for rollup in keys.rollups if rollup.agg in aggregates.FLEET_PLANS]


def _closed_query(keys: Keys, metrics: Collection[str] | None) -> FilterQuery | None:
    """TS.MGET of the latest closed bucket of every rollup series the configured rollups
    merge from: the partials' parts, and an earlier release's configured rollups."""
    mergeable = _mergeable(keys)
    if not mergeable:
        return None
    aggs = {rollup.agg for rollup in mergeable} | {p.agg for p in keys.partial_rollups}
    buckets = {str(rollup.bucket_ms) for rollup in mergeable}
    filters = [
        *_metric_terms(metrics),
        f"{k.LABEL_KIND}={k.KIND_ROLLUP}",
        f"{k.LABEL_AGG}=({','.join(sorted(aggs))})",
        f"{k.LABEL_BUCKET_MS}=({','.join(sorted(buckets))})",
    ]
    return mget(filters, _ROLLUP_LABELS)


@dataclass(slots=True)
class _Closed:
    """Step 1's rollup answer: the newest closed bucket time of each (metric, part) over the
    partials, and each (metric, configured rollup)'s newest bucket in an earlier release's
    series."""

    partial: dict[tuple[str, Rollup], int] = field(default_factory=dict)
    legacy: dict[tuple[str, Rollup], Sample] = field(default_factory=dict)

    @classmethod
    def of(cls, series: Sequence[Series]) -> _Closed:
        closed = cls()
        for item in series:
            labels = item.labels
            metric, agg = labels.get(k.LABEL_METRIC), labels.get(k.LABEL_AGG)
            bucket = labels.get(k.LABEL_BUCKET_MS)
            if metric is None or agg is None or bucket is None or not bucket.isdigit():
                continue
            if not item.samples:
                continue
            sample, key = item.samples[0], (metric, Rollup(agg, int(bucket)))
            if labels.get(k.LABEL_SHARD) is not None:
                closed.partial[key] = max(closed.partial.get(key, sample[0]), sample[0])
            elif key not in closed.legacy or sample[0] > closed.legacy[key][0]:
                closed.legacy[key] = sample
        return closed

    def newest(self, metric: str, rollup: Rollup) -> int | None:
        """T: the newest bucket of ``rollup`` that any partial of ``metric`` has closed."""
        plan = aggregates.FLEET_PLANS[rollup.agg]
        times = [
            self.partial[found]
            for part in plan.parts
            if (found := (metric, Rollup(part.agg, rollup.bucket_ms))) in self.partial
        ]
        return max(times, default=None)

    def metrics(self) -> set[str]:
        return {metric for metric, _ in self.partial} | {metric for metric, _ in self.legacy}


# One step-2 query: (part aggregation, its reducer, bucket ms, T).
_BucketRead: TypeAlias = tuple[str, Reducer, int, int]


def _bucket_query(read: _BucketRead, metrics: Collection[str]) -> FilterQuery:
    """Bucket T of every ``part`` series of ``metrics``, merged per metric.

    LATEST: a partial whose bucket T is still open (its shard has had no later sample yet)
    contributes what it holds so far, computed by Redis from its raw series. An earlier
    release's series of that part is not left out: it has bucket T only when T is the bucket
    the upgrade happened in, and then its samples belong to that bucket too.
    """
    part, reducer, bucket_ms, at = read
    filters = [
        *_metric_terms(metrics),
        f"{k.LABEL_KIND}={k.KIND_ROLLUP}",
        f"{k.LABEL_AGG}={part}",
        f"{k.LABEL_BUCKET_MS}={bucket_ms}",
    ]
    return mrange(at, at, filters, Options(latest=True, group_by=(k.LABEL_METRIC, reducer)))


async def read_latest(
    nodes: Sequence[RedisClient], keys: Keys, metrics: Collection[str] | None = None
) -> dict[str, MetricLatest]:
    """The newest raw sample and the latest merged bucket of every configured rollup of
    ``metrics`` (None: every metric that has a per-metric series), in two round trips
    whatever the number of metrics, shards or devices. Metrics without any series are left
    out (:data:`NOTHING`).

    An earlier release's rollup answers for a metric when its bucket is at least as new as
    every partial's (no partial has closed a bucket yet; on one shard it is the partial).
    """
    if metrics is not None and not metrics:
        return {}
    queries = [newest_raw_query(metrics)]
    if (closed_query := _closed_query(keys, metrics)) is not None:
        queries.append(closed_query)
    raw_answer, *closed_answer = await fan_out(nodes, queries)
    raw = newest_raw(raw_answer)
    closed = _Closed.of(closed_answer[0] if closed_answer else [])
    every = set(raw) | closed.metrics()

    found: dict[tuple[str, Rollup], Sample | None] = {}
    wanted: dict[tuple[str, Rollup], int] = {}  # (metric, rollup) -> T
    for metric in every:
        if len(metric) > NAME_MAX or not _METRIC_NAME.search(metric):
            continue  # a label no worker wrote: it must not become part of a FILTER
        for rollup in _mergeable(keys):
            newest = closed.newest(metric, rollup)
            legacy = closed.legacy.get((metric, rollup))
            if legacy is not None and (newest is None or legacy[0] >= newest):
                found[metric, rollup] = legacy
            elif newest is not None:
                wanted[metric, rollup] = newest
    found.update(await _merge_buckets(nodes, wanted))

    return {
        metric: MetricLatest(
            raw.get(metric),
            {rollup.name: found.get((metric, rollup)) for rollup in keys.rollups},
        )
        for metric in every
    }


async def _merge_buckets(
    nodes: Sequence[RedisClient], wanted: Mapping[tuple[str, Rollup], int]
) -> dict[tuple[str, Rollup], Sample | None]:
    """Bucket T of each (metric, rollup) in ``wanted`` merged across partials: one round
    trip, one TS.MRANGE per (part, bucket, T) serving every metric that shares it."""
    reads: dict[_BucketRead, set[str]] = {}
    for (metric, rollup), at in wanted.items():
        for part in aggregates.FLEET_PLANS[rollup.agg].parts:
            reads.setdefault((part.agg, part.reducer, rollup.bucket_ms, at), set()).add(metric)
    order = list(reads)
    answers = await fan_out(nodes, [_bucket_query(read, reads[read]) for read in order])
    # (part, bucket, T) -> metric -> the part's value of bucket T over every partial.
    values: dict[tuple[str, int, int], dict[str, float]] = {}
    for (agg, _, bucket_ms, at), answer in zip(order, answers, strict=True):
        values[agg, bucket_ms, at] = {
            metric: value
            for metric, samples in by_label(answer, k.LABEL_METRIC).items()
            for timestamp, value in samples
            if timestamp == at
        }
    merged: dict[tuple[str, Rollup], Sample | None] = {}
    for (metric, rollup), at in wanted.items():
        plan = aggregates.FLEET_PLANS[rollup.agg]
        parts = {p.agg: values[p.agg, rollup.bucket_ms, at].get(metric) for p in plan.parts}
        if any(value is None for value in parts.values()):
            merged[metric, rollup] = None  # a partial deleted between the two round trips
            continue
        value = plan.combine({agg: v for agg, v in parts.items() if v is not None})
        merged[metric, rollup] = None if value is None else (at, value)
    return merged
