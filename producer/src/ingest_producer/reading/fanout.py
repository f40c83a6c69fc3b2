"""Every FILTER query (TS.MGET / TS.MRANGE) runs here, on every node, and is merged.

FILTER is node-local on Redis Cluster: a query answered by one node misses the series on the
others. So each query is sent to every node client given (today ``[redis]``; the cluster
change passes every primary), one pipeline per node, and the answers are merged: per-series
answers are concatenated (a series lives on exactly one node), grouped answers
(``GROUPBY ... REDUCE``) are partial aggregates combined with their own reducer (sum + sum,
min of mins, max of maxes). A reducer that cannot be combined (avg) is not offered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ingest_producer.reading import replies
from ingest_producer.reading.replies import Series
from ingest_shared.redis_client import each_primary

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis.typing import EncodableT

    from ingest_producer.reading.replies import Sample
    from ingest_shared.redis_client import RedisClient


class Reducer(Enum):
    """GROUPBY reducers whose per-node results combine exactly."""

    SUM = "sum"
    MIN = "min"
    MAX = "max"


_COMBINE: dict[Reducer, Callable[[float, float], float]] = {
    Reducer.SUM: lambda a, b: a + b,
    Reducer.MIN: min,
    Reducer.MAX: max,
}


@dataclass(frozen=True, slots=True)
class FilterQuery:
    """One TS.MGET or TS.MRANGE with FILTER; build it with :func:`mget` or :func:`mrange`."""

    args: tuple[EncodableT, ...]
    is_mget: bool = False
    reducer: Reducer | None = None  # set for GROUPBY ... REDUCE


def mget(
    filters: Sequence[str],
    labels: Sequence[str] = (),
    *,
    latest: bool = False,
    with_labels: bool = False,
) -> FilterQuery:
    """TS.MGET [LATEST] [WITHLABELS | SELECTED_LABELS ...] FILTER ...: the latest sample of
    every match."""
    args: list[EncodableT] = ["TS.MGET"]
    if latest:
        args.append("LATEST")
    if with_labels:
        args.append("WITHLABELS")
    elif labels:
        args += ("SELECTED_LABELS", *labels)
    return FilterQuery((*args, "FILTER", *filters), is_mget=True)


@dataclass(frozen=True, slots=True)
class Aggregation:
    """``AGGREGATION agg bucket_ms`` of a TS.MRANGE, buckets aligned to ``align`` (epoch 0)."""

    agg: str
    bucket_ms: int
    align: int | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """The optional parts of a TS.MRANGE."""

    labels: Sequence[str] = ()
    with_labels: bool = False  # every label of each series (``labels`` then unused)
    count: int | None = None
    aggregation: Aggregation | None = None
    latest: bool = False
    group_by: tuple[str, Reducer] | None = None


def mrange(start: int, end: int, filters: Sequence[str], options: Options) -> FilterQuery:
    """TS.MRANGE start end ... FILTER ... [GROUPBY label REDUCE reducer]."""
    args: list[EncodableT] = ["TS.MRANGE", start, end]
    if options.latest:
        args.append("LATEST")
    if options.with_labels:
        args.append("WITHLABELS")
    elif options.labels:
        args += ("SELECTED_LABELS", *options.labels)
    if options.count is not None:
        args += ("COUNT", options.count)
    if options.aggregation is not None:
        aggregation = options.aggregation
        if aggregation.align is not None:
            args += ("ALIGN", aggregation.align)
        args += ("AGGREGATION", aggregation.agg, aggregation.bucket_ms)
    args += ("FILTER", *filters)
    reducer = None
    if options.group_by is not None:
        label, reducer = options.group_by
        args += ("GROUPBY", label, "REDUCE", reducer.value)
    return FilterQuery(tuple(args), reducer=reducer)


async def fan_out(
    nodes: Sequence[RedisClient], queries: Sequence[FilterQuery]
) -> list[list[Series]]:
    """Run every query on every node (one pipeline per node, concurrently; a cluster client is
    every primary of its cluster); merged answers, one list of series per query, in order."""
    if not queries:
        return []
    commands = [query.args for query in queries]
    answered = await asyncio.gather(*(each_primary(node, commands) for node in nodes))
    per_node = [answers for node_answers in answered for answers in node_answers]
    return [
        merge(query, [answers[index] for answers in per_node])
        for index, query in enumerate(queries)
    ]


def merge(query: FilterQuery, node_replies: Sequence[Any]) -> list[Series]:
    """One query's answers from several nodes as one answer."""
    parse = replies.mget if query.is_mget else replies.mrange
    parsed = [series for reply in node_replies for series in parse(reply)]
    if query.reducer is None:
        return parsed
    return merge_groups(parsed, query.reducer)


def merge_groups(partials: Sequence[Series], reducer: Reducer) -> list[Series]:
    """Partial GROUPBY results (several per group when the group spans nodes) combined."""
    combine = _COMBINE[reducer]
    groups: dict[str, tuple[dict[str, str | None], dict[int, float]]] = {}
    for series in partials:
        _, points = groups.setdefault(series.key, (series.labels, {}))
        for timestamp, value in series.samples:
            known = points.get(timestamp)
            points[timestamp] = value if known is None else combine(known, value)
    return [Series(key, labels, sorted(points.items())) for key, (labels, points) in groups.items()]


def by_label(series: Sequence[Series], label: str) -> dict[str, list[Sample]]:
    """Samples keyed by one label's value (a GROUPBY key "label=value", or a selected label)."""
    found: dict[str, list[Sample]] = {}
    prefix = f"{label}="
    for item in series:
        value = item.labels.get(label)
        if value is None and item.key.startswith(prefix):
            value = item.key.removeprefix(prefix)
        if value is not None:
            found[value] = item.samples
    return found
