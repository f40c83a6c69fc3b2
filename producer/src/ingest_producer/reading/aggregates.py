"""Fleet aggregates: how an aggregation over many device series is built from parts that
combine exactly, and where the parts come from (rollup series or Redis aggregating raw).

A fleet average is sum of sums / sum of counts per bucket, never an average of device
averages (device a: one sample 10, device b: three samples 20 -> 17.5, not 15). first, last
and std.p cannot be combined exactly from per-device buckets: they need a source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest_producer.reading.fanout import (
    Aggregation,
    FilterQuery,
    Options,
    Reducer,
    by_label,
    mrange,
)
from ingest_shared import keys as k
from ingest_shared.keys import Rollup

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ingest_producer.reading.replies import Sample, Series

GROUP_LABEL = k.LABEL_METRIC
# Aggregations a fleet query refuses (422): no exact combination of per-device buckets.
NEEDS_SOURCE = tuple(agg for agg in k.AGGREGATIONS if agg not in k.MERGE_PARTS)


@dataclass(frozen=True, slots=True)
class Part:
    """One per-device aggregation and the reducer that combines it across devices."""

    agg: str
    reducer: Reducer


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """The parts of a fleet aggregation and how their values (by part name) give its value."""

    parts: tuple[Part, ...]
    combine: Callable[[Mapping[str, float]], float | None]


# How each part (ingest_shared.keys.MERGE_PARTS) combines across series.
PART_REDUCERS = {"sum": Reducer.SUM, "count": Reducer.SUM, "min": Reducer.MIN, "max": Reducer.MAX}


def _ratio(values: Mapping[str, float]) -> float | None:
    total, count = values["sum"], values["count"]
    return total / count if count else None


def _spread(values: Mapping[str, float]) -> float | None:
    return values["max"] - values["min"]


def _itself(agg: str) -> Callable[[Mapping[str, float]], float | None]:
    """The combination of an aggregation that is its own only part (sum, count, min, max)."""
    return lambda values: values[agg]


_COMBINE = {"avg": _ratio, "range": _spread}

FLEET_PLANS = {
    agg: FleetPlan(
        tuple(Part(part, PART_REDUCERS[part]) for part in parts),
        _COMBINE.get(agg) or _itself(agg),
    )
    for agg, parts in k.MERGE_PARTS.items()
}


def from_rollups(plan: FleetPlan, bucket_ms: int, rollups: Sequence[Rollup]) -> bool:
    """True when every part of ``plan`` has a configured rollup of that bucket."""
    return all(Rollup(part.agg, bucket_ms) in rollups for part in plan.parts)


def part_queries(
    plan: FleetPlan,
    start: int,
    end: int,
    bucket_ms: int,
    selector: Sequence[str],
    *,
    use_rollups: bool,
) -> list[FilterQuery]:
    """One grouped TS.MRANGE per part over the per-device series that ``selector`` (FILTER
    terms such as ``metric=cpu``) picks, grouped by metric.

    From rollup series (with LATEST, so each device's still-open bucket is computed from its
    raw series by Redis), or from raw series aggregated by Redis.
    """
    queries = []
    for part in plan.parts:
        group = (GROUP_LABEL, part.reducer)
        if use_rollups:
            filters = [
                *selector,
                f"{k.LABEL_KIND}={k.KIND_SOURCE_ROLLUP}",
                f"{k.LABEL_AGG}={part.agg}",
                f"{k.LABEL_BUCKET_MS}={bucket_ms}",
            ]
            options = Options(latest=True, group_by=group)
        else:
            filters = [*selector, f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"]
            options = Options(aggregation=Aggregation(part.agg, bucket_ms), group_by=group)
        queries.append(mrange(start, end, filters, options))
    return queries


def combine(plan: FleetPlan, parts: Sequence[Sequence[Sample]]) -> list[Sample]:
    """The fleet's samples from each part's samples (buckets every part has)."""
    maps = [dict(samples) for samples in parts]
    timestamps = set(maps[0]).intersection(*maps[1:])
    out = []
    for timestamp in sorted(timestamps):
        value = plan.combine({p.agg: m[timestamp] for p, m in zip(plan.parts, maps, strict=True)})
        if value is not None:
            out.append((timestamp, value))
    return out


def is_open(samples: Sequence[Sample], newest: int | None, bucket_ms: int) -> bool:
    """True when the last bucket of ``samples`` holds the newest sample of the series it
    was computed from: no later sample has closed it yet."""
    if not samples or newest is None:
        return False
    last = samples[-1][0]
    return last <= newest < last + bucket_ms


def by_metric(series: Sequence[Series]) -> dict[str, list[Sample]]:
    """Samples of a query grouped (or labelled) by metric, keyed by metric name."""
    return by_label(series, GROUP_LABEL)
