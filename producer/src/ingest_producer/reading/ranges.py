"""``/metrics/{metric}/range``: one device's series or the fleet, raw or aggregated.

Aggregated ranges are served from a rollup series when the aggregation and bucket equal a
configured rollup (with LATEST, so the still-open last bucket is computed from the raw series
by Redis), otherwise Redis aggregates the raw series (``TS.RANGE ... AGGREGATION``). Raw
samples are never pulled into Python to be aggregated. Buckets start at multiples of the bucket
(as rollup rules do) from the first boundary at or after ``from``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from redis.exceptions import ResponseError

from ingest_producer.models import RangePoint, RangeResult
from ingest_producer.reading import aggregates, params, partials, replies
from ingest_producer.reading.fanout import Aggregation, Options, Reducer, fan_out, mrange
from ingest_shared import keys as k
from ingest_shared.keys import Rollup
from ingest_shared.redis_client import call
from ingest_shared.schema import now_ms

if TYPE_CHECKING:
    from ingest_producer.reading.context import ReadContext
    from ingest_producer.reading.replies import Sample

DEFAULT_SPAN_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A checked range request: names valid, times in order, bucket given with agg only."""

    metric: str
    source: str | None
    agg: str | None
    bucket_ms: int | None
    start: int
    end: int
    # Event labels every series read must carry (``label=name=value`` parameters).
    labels: dict[str, str] = field(default_factory=dict)


def parse_range(
    ctx: ReadContext,
    *,
    metric: str,
    source: str | None,
    from_: str | None,
    to: str | None,
    agg: str | None,
    bucket_ms: int | None,
    labels: list[str] | None = None,
) -> RangeQuery:
    """Check every parameter (422 naming it otherwise); no Redis call."""
    metric = params.metric_name(metric)
    wanted = params.label_filters(labels)
    source = params.optional_source(source)
    agg = params.aggregation(agg)
    start, end = params.time_range(from_, to, now_ms(), DEFAULT_SPAN_MS)
    if agg is None:
        if bucket_ms is not None:
            raise params.invalid("bucketMs", "only allowed together with `agg`")
    elif bucket_ms is None:
        bucket_ms = ctx.keys.rollups[0].bucket_ms
    if agg is not None and source is None and agg in aggregates.NEEDS_SOURCE:
        msg = (
            f"agg={agg} needs `source`: it cannot be combined exactly across devices "
            "(fleet queries offer avg, min, max, sum, count, range)"
        )
        raise params.invalid("agg", msg)
    return RangeQuery(metric, source, agg, bucket_ms, start, end, wanted)


def _too_many(ctx: ReadContext, query: RangeQuery, points: str) -> Exception:
    """The 422 for a range of more than max points, naming a bucket that fits."""
    bucket = params.fitting_bucket(query.start, query.end, ctx.max_points)
    msg = (
        f"{points} exceed INGEST_MAX_POINTS ({ctx.max_points}); ask for fewer with "
        f"agg=avg&bucketMs={bucket} (or a larger bucket) or a shorter range"
    )
    return params.invalid("bucketMs" if query.agg else "from", msg)


async def read_range(ctx: ReadContext, query: RangeQuery) -> RangeResult:
    """The points ``query`` asks for (422 when there would be more than max points)."""
    if query.agg is not None:
        assert query.bucket_ms is not None
        buckets = params.buckets_between(query.start, query.end, query.bucket_ms)
        if buckets > ctx.max_points:
            raise _too_many(ctx, query, f"{buckets} buckets of {query.bucket_ms} ms")
    if query.source is None or query.labels:
        return await _selected(ctx, query)
    if query.agg is None:
        return await _source_raw(ctx, query, query.source)
    return await _source_aggregated(ctx, query, query.source)


async def _selected(ctx: ReadContext, query: RangeQuery) -> RangeResult:
    """Every device series the query's metric, source (if any) and labels pick: the fleet, or
    one device's series with labels (one per label set)."""
    if query.agg is None:
        return await _fleet_raw(ctx, query)
    if query.agg in aggregates.NEEDS_SOURCE:
        return await _per_series_aggregated(ctx, query)
    return await _fleet_aggregated(ctx, query)


Origin = Literal["rollup", "raw"]


def _result(
    query: RangeQuery, origin: Origin, open_: bool, points: list[RangePoint]
) -> RangeResult:
    return RangeResult(
        metric=query.metric,
        source=query.source,
        agg=query.agg,
        bucketMs=query.bucket_ms,
        from_=query.start,
        to=query.end,
        origin=origin,
        lastBucketOpen=open_,
        points=points,
    )


def _points(samples: list[Sample]) -> list[RangePoint]:
    return [RangePoint(timestamp, value) for timestamp, value in samples]


async def _source_raw(ctx: ReadContext, query: RangeQuery, source: str) -> RangeResult:
    # A bounded read: one more than allowed tells "too many" without reading them all.
    key = ctx.keys.source_raw(query.metric, source)
    try:
        reply = await call(
            ctx.redis, "TS.RANGE", key, query.start, query.end, "COUNT", ctx.max_points + 1
        )
    except ResponseError as exc:
        reply = exc
    samples = replies.range_or_none(reply)
    if samples is None:  # no series without labels: the device's labelled ones, if any
        return await _selected(ctx, query)
    if len(samples) > ctx.max_points:
        raise _too_many(ctx, query, f"more than {ctx.max_points} raw points")
    return _result(query, "raw", False, _points(samples))


async def _source_aggregated(ctx: ReadContext, query: RangeQuery, source: str) -> RangeResult:
    agg, bucket = query.agg, query.bucket_ms
    assert agg is not None
    assert bucket is not None
    keys = ctx.keys
    raw_key = keys.source_raw(query.metric, source)
    start = params.first_bucket(query.start, bucket)
    rollup = Rollup(agg, bucket)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.execute_command("TS.GET", raw_key)
    if rollup in keys.rollups:
        rollup_key = keys.source_rollup_of(query.metric, source, rollup)
        pipe.execute_command("TS.RANGE", rollup_key, start, query.end, "LATEST")
    else:
        pipe.execute_command("TS.RANGE", raw_key, start, query.end, "AGGREGATION", agg, bucket)
    newest_reply, range_reply = await pipe.execute(raise_on_error=False)
    newest = replies.latest_or_none(newest_reply)
    samples = replies.range_or_none(range_reply)
    if newest is None and samples is None:  # no series without labels: its labelled ones
        return await _selected(ctx, query)
    origin: Origin = "rollup" if rollup in keys.rollups else "raw"
    if samples is None and origin == "rollup" and newest is not None:
        # The raw series exists but not this rollup (yet): the worker adds a rollup when it
        # next sees the device, so until then Redis aggregates the raw series.
        origin = "raw"
        reply = await call(
            ctx.redis, "TS.RANGE", raw_key, start, query.end, "AGGREGATION", agg, bucket
        )
        samples = replies.samples(reply)
    samples = samples or []
    newest_ts = None if newest is None else newest[0]
    return _result(query, origin, aggregates.is_open(samples, newest_ts, bucket), _points(samples))


def _metric_filter(metric: str) -> str:
    return f"{k.LABEL_METRIC}={metric}"


def _selector(query: RangeQuery) -> list[str]:
    """FILTER terms for the device series of ``query``: its metric, source and labels."""
    terms = [_metric_filter(query.metric)]
    if query.source is not None:
        terms.append(f"{k.LABEL_SOURCE}={query.source}")
    return terms + params.label_terms(query.labels)


async def _per_series_aggregated(ctx: ReadContext, query: RangeQuery) -> RangeResult:
    """An aggregation that cannot be merged across series (first, last, std.p) of one source:
    buckets of each of its label sets, each point carrying its series' labels."""
    assert query.agg is not None
    assert query.bucket_ms is not None
    start = params.first_bucket(query.start, query.bucket_ms)
    selector = [*_selector(query), f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"]
    options = Options(with_labels=True, aggregation=Aggregation(query.agg, query.bucket_ms, start))
    [found] = await fan_out(ctx.nodes, [mrange(start, query.end, selector, options)])
    points = sorted(
        (
            RangePoint(timestamp, value, query.source, labels)
            for series in found
            for labels in (k.event_labels(series.labels),)
            for timestamp, value in series.samples
        ),
        key=_point_order,
    )
    if len(points) > ctx.max_points:
        raise _too_many(ctx, query, f"{len(points)} buckets of {len(found)} label sets")
    return _result(query, "raw", False, points)


def _point_order(point: RangePoint) -> tuple[int, str, list[tuple[str, str]]]:
    return point.timestampMs, point.source or "", sorted((point.labels or {}).items())


async def _fleet_raw(ctx: ReadContext, query: RangeQuery) -> RangeResult:
    selector = [*_selector(query), f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"]
    # Count first (one bucket over the whole range), so a huge fleet is refused without
    # reading its samples.
    span = query.end - query.start + 1
    count = Options(
        aggregation=Aggregation("count", span, align=query.start),
        group_by=(k.LABEL_METRIC, Reducer.SUM),
    )
    [counted] = await fan_out(ctx.nodes, [mrange(query.start, query.end, selector, count)])
    total = int(sum(value for series in counted for _, value in series.samples))
    if total > ctx.max_points:
        raise _too_many(ctx, query, f"{total} raw points")
    fetch = Options(with_labels=True, count=ctx.max_points + 1)
    [series_list] = await fan_out(ctx.nodes, [mrange(query.start, query.end, selector, fetch)])
    points = sorted(
        (
            RangePoint(timestamp, value, series.labels.get(k.LABEL_SOURCE), labels)
            for series in series_list
            for labels in (k.event_labels(series.labels),)
            for timestamp, value in series.samples
        ),
        key=_point_order,
    )
    if len(points) > ctx.max_points:  # samples arrived between the count and the read
        raise _too_many(ctx, query, f"more than {ctx.max_points} raw points")
    return _result(query, "raw", False, points)


async def _fleet_aggregated(ctx: ReadContext, query: RangeQuery) -> RangeResult:
    agg, bucket = query.agg, query.bucket_ms
    assert agg is not None
    assert bucket is not None
    plan = aggregates.FLEET_PLANS[agg]
    use_rollups = aggregates.from_rollups(plan, bucket, ctx.keys.rollups)
    selector = _selector(query)
    start = params.first_bucket(query.start, bucket)
    parts = aggregates.part_queries(
        plan, start, query.end, bucket, selector, use_rollups=use_rollups
    )
    # The newest sample of the metric, only for its time (lastBucketOpen): the per-metric
    # series (its partials) has every device's timestamps; its values are never used here.
    newest_query = partials.newest_raw_query([query.metric])
    *answers, newest_answer = await fan_out(ctx.nodes, [*parts, newest_query])
    samples = aggregates.combine(
        plan, [aggregates.by_metric(answer).get(query.metric, []) for answer in answers]
    )
    newest_sample = partials.newest_raw(newest_answer).get(query.metric)
    newest = None if newest_sample is None else newest_sample[0]
    open_ = aggregates.is_open(samples, newest, bucket)
    return _result(query, "rollup" if use_rollups else "raw", open_, _points(samples))
