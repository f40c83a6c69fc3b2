"""``/charts``: every metric's chart in one call, in a constant number of Redis round trips.

All metrics are read at once with FILTERs (``kind=...``, plus ``source=`` for one device), so
the cost does not grow with the number of metrics or devices: one pipeline per node.
Per metric: fine-grained points (window / 240, whole seconds) and the first configured rollup
over the window. Fleet fine points are the true average (sum of sums / sum of counts); one
device's are its raw samples when there are at most ``RAW_LIMIT``, else Redis' averages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest_producer.models import Chart, Charts, Point
from ingest_producer.reading import aggregates, params, partials
from ingest_producer.reading.fanout import Aggregation, Options, fan_out, mget, mrange
from ingest_shared import keys as k
from ingest_shared.schema import now_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ingest_producer.reading.context import ReadContext
    from ingest_producer.reading.fanout import FilterQuery
    from ingest_producer.reading.replies import Sample, Series

WINDOWS_MS = {"15m": 900_000, "1h": 3_600_000, "24h": 86_400_000}
# About this many fine buckets per window, and at most this many raw samples of one device.
FINE_BUCKETS = 240
RAW_LIMIT = 300


# A chart's answer is served again for one fine bucket (15 s of a 1 h chart), at most this
# long: the fleet's fine points are computed from every device's raw samples, which at 40,000
# events/s held Redis ~0.36 s per hour of window, and the dashboard polls every 10 s.
MAX_ANSWER_LIFETIME_MS = 60_000


def answer_lifetime_ms(window: str) -> int:
    """How long a chart of ``window`` may be served again: one fine bucket (a chart cannot
    show finer than that anyway), capped at MAX_ANSWER_LIFETIME_MS; 0 for no such window."""
    window_ms = WINDOWS_MS.get(window)
    return 0 if window_ms is None else min(fine_bucket_ms(window_ms), MAX_ANSWER_LIFETIME_MS)


def fine_bucket_ms(window_ms: int) -> int:
    """window / 240, rounded up to whole seconds."""
    return -(-window_ms // (FINE_BUCKETS * 1000)) * 1000


def _points(samples: Sequence[Sample]) -> list[Point]:
    return [Point(timestamp, value) for timestamp, value in samples]


async def read_charts(ctx: ReadContext, window: str, source: str | None) -> Charts:
    """Charts of every metric (the fleet, or the metrics ``source`` reports)."""
    window_ms = WINDOWS_MS.get(window)
    if window_ms is None:
        raise params.invalid("window", f"must be one of {', '.join(WINDOWS_MS)}")
    source = params.optional_source(source)
    end = now_ms()
    start = end - window_ms
    fine = fine_bucket_ms(window_ms)
    rollup = ctx.keys.rollups[0]
    # A small first bucket over 24 h would be thousands of points: keep the newest ones.
    rollup_start = params.first_bucket(
        max(start, end - (ctx.max_points - 1) * rollup.bucket_ms), rollup.bucket_ms
    )
    if source is None:
        charts = await _fleet(ctx, params.first_bucket(start, fine), end, fine, rollup_start)
    else:
        charts = await _device(
            ctx, source, start=start, end=end, fine=fine, rollup_start=rollup_start
        )
    return Charts(
        window=window, from_=start, to=end, source=source, rollup=rollup.name, charts=charts
    )


async def _fleet(
    ctx: ReadContext, fine_start: int, end: int, fine: int, rollup_start: int
) -> list[Chart]:
    rollup = ctx.keys.rollups[0]
    every = ()  # FILTER terms selecting every metric: the kind= terms are added per part
    fine_plan = aggregates.FLEET_PLANS["avg"]
    queries: list[FilterQuery] = aggregates.part_queries(
        fine_plan, fine_start, end, fine, every, use_rollups=False
    )
    plan = aggregates.FLEET_PLANS.get(rollup.agg)  # None: first/last/std.p have no fleet form
    if plan is not None:
        use_rollups = aggregates.from_rollups(plan, rollup.bucket_ms, ctx.keys.rollups)
        queries += aggregates.part_queries(
            plan, rollup_start, end, rollup.bucket_ms, every, use_rollups=use_rollups
        )
    # Every metric and its newest sample time (the per-metric series: timestamps only).
    queries.append(partials.newest_raw_query())
    answers = await fan_out(ctx.nodes, queries)
    newest = _newest_by_metric(answers[-1])
    fine_parts = [aggregates.by_metric(a) for a in answers[: len(fine_plan.parts)]]
    rollup_parts = [aggregates.by_metric(a) for a in answers[len(fine_plan.parts) : -1]]
    charts = []
    for metric in sorted(newest):
        raw = aggregates.combine(fine_plan, [part.get(metric, []) for part in fine_parts])
        rolled: list[Sample] = []
        if plan is not None:
            rolled = aggregates.combine(plan, [part.get(metric, []) for part in rollup_parts])
        open_ = aggregates.is_open(rolled, newest[metric], rollup.bucket_ms)
        charts.append(Chart(metric, _points(raw), fine, _points(rolled), open_))
    return charts


async def _device(
    ctx: ReadContext, source: str, *, start: int, end: int, fine: int, rollup_start: int
) -> list[Chart]:
    rollup = ctx.keys.rollups[0]
    device = f"{k.LABEL_SOURCE}={source}"
    raw_filter = [device, f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"]
    rollup_filter = [
        device,
        f"{k.LABEL_KIND}={k.KIND_SOURCE_ROLLUP}",
        f"{k.LABEL_AGG}={rollup.agg}",
        f"{k.LABEL_BUCKET_MS}={rollup.bucket_ms}",
    ]
    metric_label = (k.LABEL_METRIC,)
    fine_options = Options(labels=metric_label, aggregation=Aggregation("avg", fine))
    raw, averaged, rolled, latest = await fan_out(
        ctx.nodes,
        [
            # One more than the limit tells whether the raw samples fit.
            mrange(start, end, raw_filter, Options(labels=metric_label, count=RAW_LIMIT + 1)),
            mrange(params.first_bucket(start, fine), end, raw_filter, fine_options),
            mrange(rollup_start, end, rollup_filter, Options(labels=metric_label, latest=True)),
            mget(raw_filter, metric_label),
        ],
    )
    raw_by_metric = aggregates.by_metric(raw)
    averaged_by_metric = aggregates.by_metric(averaged)
    rolled_by_metric = aggregates.by_metric(rolled)
    newest = _newest_by_metric(latest)
    charts = []
    for metric in sorted(newest):
        samples = raw_by_metric.get(metric, [])
        bucket: int | None = None
        if len(samples) > RAW_LIMIT:
            samples, bucket = averaged_by_metric.get(metric, []), fine
        rollup_samples = rolled_by_metric.get(metric, [])
        open_ = aggregates.is_open(rollup_samples, newest[metric], rollup.bucket_ms)
        charts.append(Chart(metric, _points(samples), bucket, _points(rollup_samples), open_))
    return charts


def _newest_by_metric(series: Sequence[Series]) -> dict[str, int | None]:
    """Metric -> time of its newest sample across its series (a metric has one per shard),
    None when they are all empty; from a TS.MGET."""
    return {
        metric: None if sample is None else sample[0]
        for metric, sample in partials.newest_raw(series).items()
    }
