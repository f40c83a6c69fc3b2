"""``/metrics`` and ``/sources``: what is being reported, by whom, and who went quiet.

Each answer costs a fixed number of round trips whatever the number of metrics or devices:
TS.MGET with FILTER returns every matching series' latest sample and labels in one command.
A metric's latest values come from ``partials``, which merges its per-shard series.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from ingest_producer.models import (
    MetricInfo,
    MetricList,
    Point,
    SourceInfo,
    SourceList,
    SourceMetric,
)
from ingest_producer.reading import params, partials
from ingest_producer.reading.fanout import fan_out, mget
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import NAME_MAX, now_ms

if TYPE_CHECKING:
    from ingest_producer.reading.context import ReadContext
    from ingest_producer.reading.replies import Sample

# Above this many sources a metric lists only their count.
MAX_LISTED_SOURCES = 50
# Devices per /sources page: by default, and at most. A cursor is the hex of the last
# device's name (at most NAME_MAX bytes).
SOURCES_LIMIT = 500
SOURCES_MAX_LIMIT = 5_000
CURSOR_PATTERN = rf"\A(?:[0-9a-f]{{2}}){{1,{NAME_MAX}}}\Z"
_CURSOR = re.compile(CURSOR_PATTERN)
_DEVICE_LABELS = (k.LABEL_METRIC, k.LABEL_SOURCE)


def _point(sample: Sample | None) -> Point | None:
    return None if sample is None else Point(*sample)


async def read_metrics(ctx: ReadContext) -> MetricList:
    """Every metric (the metrics set), sorted: its sources, latest raw and rollup values
    (merged across the per-shard partials by :mod:`~ingest_producer.reading.partials`)."""
    members, [devices], latest = await asyncio.gather(
        call(ctx.redis, "SMEMBERS", ctx.keys.metrics),
        fan_out(ctx.nodes, [mget([f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"], _DEVICE_LABELS)]),
        partials.read_latest(ctx.nodes, ctx.keys),
    )
    sources: dict[str, set[str]] = {}
    for series in devices:
        metric, source = series.labels.get(k.LABEL_METRIC), series.labels.get(k.LABEL_SOURCE)
        if metric is not None and source is not None:
            sources.setdefault(metric, set()).add(source)
    metrics = sorted({m.decode(errors="replace") for m in members} | set(sources))
    found = {metric: latest.get(metric, partials.NOTHING) for metric in metrics}
    return MetricList(
        [
            MetricInfo(
                metric=metric,
                sourceCount=len(sources.get(metric, ())),
                sources=(
                    sorted(sources.get(metric, ()))
                    if len(sources.get(metric, ())) <= MAX_LISTED_SOURCES
                    else None
                ),
                latest=_point(found[metric].raw),
                rollups={
                    rollup.name: _point(found[metric].rollups.get(rollup.name))
                    for rollup in ctx.keys.rollups
                },
            )
            for metric in metrics
        ]
    )


async def read_sources(
    ctx: ReadContext,
    metric: str | None,
    stale_only: bool,
    labels: list[str] | None = None,
    *,
    limit: int = SOURCES_LIMIT,
    cursor: str | None = None,
) -> SourceList:
    """One page of the devices (sorted by name: ``limit`` of them after ``cursor``, a previous
    page's ``next``), each with the latest sample of each metric it reports (or of
    ``metric``; with ``labels``, of its series that carry them; one entry per label set);
    ``stale_only`` keeps only metrics silent for longer than INGEST_STALE_AFTER_MS."""
    after = after_cursor(cursor)
    filters = [f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"]
    if metric is not None:
        filters.append(f"{k.LABEL_METRIC}={params.metric_name(metric)}")
    filters += params.label_terms(params.label_filters(labels))
    # TS.MGET cannot page: it answers every series, and the page is cut here.
    [series_list] = await fan_out(ctx.nodes, [mget(filters, with_labels=True)])
    now = now_ms()
    stale_after = ctx.stale_after_ms
    by_source: dict[str, list[SourceMetric]] = {}
    for series in series_list:
        name, source = series.labels.get(k.LABEL_METRIC), series.labels.get(k.LABEL_SOURCE)
        if name is None or source is None or not series.samples or source <= after:
            continue
        timestamp, value = series.samples[0]
        stale = now - timestamp > stale_after
        if stale or not stale_only:
            found = SourceMetric(name, timestamp, value, stale, k.event_labels(series.labels))
            by_source.setdefault(source, []).append(found)
    page = sorted(by_source.items())[:limit]
    more = len(by_source) > limit
    return SourceList(
        staleAfterMs=stale_after,
        now=now,
        sources=[
            SourceInfo(
                source=source,
                stale=any(m.stale for m in found),
                metrics=sorted(found, key=_metric_order),
            )
            for source, found in page
        ],
        next=page[-1][0].encode().hex() if more else None,
    )


def after_cursor(cursor: str | None) -> str:
    """The source name a cursor points after ("" for the first page). Any hex text is a
    position in the order, so a cursor stays valid when its device goes away."""
    if cursor is None:
        return ""
    if _CURSOR.match(cursor) is None:
        raise params.invalid("cursor", "must be the `next` of a previous page")
    return bytes.fromhex(cursor).decode(errors="replace")


def _metric_order(metric: SourceMetric) -> tuple[str, list[tuple[str, str]]]:
    return metric.metric, sorted((metric.labels or {}).items())
