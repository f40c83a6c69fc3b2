"""The read routes: access, metrics, ranges, charts, sources. Thin: ``reading`` does the work,
and ``reading.isolation`` keeps it from slowing ingest (shared, cached, bounded).

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

from typing import Annotated, Any, Literal

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter, QueryParameter

from ingest_producer.auth import ACCESS_OPT, Access, KeyRing, presented_key
from ingest_producer.deadletter_routes import dead_letter_routes
from ingest_producer.errors import error_responses
from ingest_producer.models import AccessInfo, Charts, MetricList, RangeResult, SourceList
from ingest_producer.openapi import TIME_PARAMETER, ParameterOperation
from ingest_producer.reading import catalog, charts, params, ranges
from ingest_producer.reading.context import ReadContext, create_read_context
from ingest_producer.reading.isolation import (
    ReadGuard,
    json_answer,
    shared_responses,
)
from ingest_shared.keys import AGGREGATIONS
from ingest_shared.redis_client import RedisClient
from ingest_shared.schema import METRIC_PATTERN, NAME_MAX, SOURCE_PATTERN
from ingest_shared.settings import Settings

_READ = {ACCESS_OPT: Access.READ}
_TIME = "Epoch milliseconds or an RFC 3339 time (naive = UTC)."


def _name(pattern: str) -> dict[str, Any]:
    """Documents a metric or source name; reading.params checks it, and says what is wrong in
    words (Litestar would quote the regex)."""
    return {"schema_extra": {"minLength": 1, "maxLength": NAME_MAX, "pattern": pattern}}


# Repeatable: every given label must match.
_LABEL_PARAMETER = Annotated[
    list[str] | None,
    Parameter(
        description=(
            "Only series carrying this event label, as `name=value` (repeat for several); "
            "reserved names (metric, source, ...) are parameters of their own"
        ),
        schema_extra={"items": {"type": "string", "pattern": params.LABEL_FILTER_PATTERN}},
    ),
]


def read_side_routes(
    settings: Settings,
    redis: RedisClient,
    ring: KeyRing,
    guard: ReadGuard,
    *,
    reader: "RedisClient | None" = None,
) -> list[HTTPRouteHandler]:
    """Every read-side route (queries and dead letters), sharing ``guard``. The queries read
    from ``reader`` (a replica, default ``redis``); the dead letters, which the same routes
    replay and delete, from ``redis``."""
    ctx = create_read_context(settings, redis)
    queries = ctx if reader is None else create_read_context(settings, reader)
    # Without write keys a write needs a JSON Content-Type (see jsonbody.require_json).
    type_required = not settings.write_keys
    return [
        *read_routes(queries, ring, guard),
        *dead_letter_routes(ctx, guard, type_required=type_required),
    ]


def read_routes(ctx: ReadContext, ring: KeyRing, guard: ReadGuard) -> list[HTTPRouteHandler]:
    """The read-side routes, bound to their collaborators."""

    @get(
        "/api/ingest/access",
        responses=error_responses(500),
        tags=["queries"],
        summary="Whether API keys are required, and what the presented key may do",
        description=(
            "Open route (no key needed). `access` is `write` when auth is off; with auth on it "
            "is the access of the key in `Authorization: Bearer` or `X-API-Key`, or `none`."
        ),
    )
    async def access(request: Request[Any, Any, Any]) -> AccessInfo:
        if ring.open:
            return AccessInfo(authEnabled=False, access="write")
        key = presented_key(request.headers)
        found = None if key is None else ring.access_of(key)
        level: Literal["write", "read", "none"] = "none" if found is None else found.value
        return AccessInfo(authEnabled=True, access=level)

    @get(
        "/api/ingest/metrics",
        responses=shared_responses(MetricList, 401, 403, 500, 503),
        opt=_READ,
        tags=["queries"],
        summary="Every metric: its sources, latest raw value and latest value of each rollup",
        description=(
            "`sources` is listed only when `sourceCount` <= 50 (else null). A fixed number of "
            "Redis round trips whatever the number of metrics."
        ),
    )
    async def metrics() -> Response[bytes]:
        return json_answer(await guard.shared("metrics", (), lambda: catalog.read_metrics(ctx)))

    @get(
        "/api/ingest/metrics/{metric:str}/range",
        responses=shared_responses(RangeResult, 401, 403, 422, 500, 503),
        opt=_READ,
        operation_class=ParameterOperation,
        tags=["queries"],
        summary="Points of one metric over time, for one source or the whole fleet",
        description=(
            "Without `agg`: raw samples (fleet points name their `source`). With `agg`: one "
            "point per bucket (aligned to multiples of `bucketMs`), served from a configured "
            "rollup when `agg` and `bucketMs` match one (`origin: rollup`), else aggregated by "
            "Redis from the raw series (`origin: raw`). `lastBucketOpen`: the last bucket "
            "still holds the newest sample and may change. The fleet (no `source`) is computed "
            "from every device's series; its `avg` is the true mean of all samples; `first`, "
            "`last` and `std.p` need a `source`. More than INGEST_MAX_POINTS points: 422 "
            "naming a `bucketMs` that fits. Events with labels are stored one series per "
            "label set: a `source` reads all of its label sets (points carry `labels`), "
            "`label` narrows to the series carrying each given label."
        ),
    )
    async def metric_range(
        *,
        metric: Annotated[
            str,
            Parameter(description="Metric name", **_name(METRIC_PATTERN)),
        ],
        from_: Annotated[
            str | None,
            QueryParameter(
                name="from",
                description=f"Start. {_TIME} Default: `to` - 1 h",
                schema_extra=TIME_PARAMETER,
            ),
        ] = None,
        to: Annotated[
            str | None,
            Parameter(description=f"End. {_TIME} Default: now", schema_extra=TIME_PARAMETER),
        ] = None,
        source: Annotated[
            str | None,
            Parameter(description="One device; omitted = the fleet", **_name(SOURCE_PATTERN)),
        ] = None,
        agg: Annotated[
            str | None,
            Parameter(
                description=(
                    f"Aggregation per bucket: one of {', '.join(AGGREGATIONS)}; omitted = raw "
                    "samples"
                ),
                schema_extra={"enum": list(AGGREGATIONS)},
            ),
        ] = None,
        # Named as in the query string so that validation errors name it so.
        bucketMs: Annotated[  # noqa: N803
            int | None,
            Parameter(
                ge=1,
                # Redis refuses a bucket past 64 bits (a 500 before); none is longer than time.
                le=params.MAX_EPOCH_MS,
                description="Bucket size in ms (with `agg` only; default: the first rollup's)",
            ),
        ] = None,
        label: _LABEL_PARAMETER = None,
    ) -> Response[bytes]:
        query = ranges.parse_range(
            ctx,
            metric=metric,
            source=source,
            from_=from_,
            to=to,
            agg=agg,
            bucket_ms=bucketMs,
            labels=label,
        )
        # Shared like the dashboard's queries: a window relative to now (no from/to) is the
        # same query for every reader within INGEST_READ_CACHE_MS.
        same = (metric, source, from_, to, agg, bucketMs, sorted(set(label or ())))
        answer = await guard.shared(
            "range", same, lambda: ranges.read_range(ctx, query), span_ms=query.end - query.start
        )
        return json_answer(answer)

    @get(
        "/api/ingest/charts",
        responses=shared_responses(Charts, 401, 403, 422, 500, 503),
        opt=_READ,
        operation_class=ParameterOperation,
        tags=["queries"],
        summary="Every metric's chart over a window, in one call",
        description=(
            "Per metric: `raw` (the fleet's true average per fine bucket of window/240 "
            "seconds, or one device's raw samples, averaged by Redis when there are more than "
            "300), and `rollup` (the first configured rollup over the window; its last point "
            "may be the still-open bucket). A constant number of Redis round trips whatever "
            "the number of metrics or devices."
        ),
    )
    async def chart_data(
        window: Annotated[
            Literal["15m", "1h", "24h"], Parameter(description="How far back from now")
        ] = "1h",
        source: Annotated[
            str | None,
            Parameter(description="One device; omitted = the fleet", **_name(SOURCE_PATTERN)),
        ] = None,
    ) -> Response[bytes]:
        answer = await guard.shared(
            "charts",
            (window, source),
            lambda: charts.read_charts(ctx, window, source),
            lifetime_ms=charts.answer_lifetime_ms(window),
        )
        return json_answer(answer)

    @get(
        "/api/ingest/sources",
        responses=shared_responses(SourceList, 401, 403, 422, 500, 503),
        opt=_READ,
        operation_class=ParameterOperation,
        tags=["queries"],
        summary="Devices with the latest sample of each metric they report",
        description=(
            "A metric is `stale` when its latest sample is older than INGEST_STALE_AFTER_MS; "
            "a device is stale when any of its metrics is. `stale=true` lists only stale "
            "devices, with only their stale metrics. One TS.MGET whatever the number of devices. "
            "Paged: `limit` devices (sorted by name) per page; pass `next` as `cursor` for the "
            "next page (`next` is null on the last)."
        ),
    )
    async def sources(
        metric: Annotated[
            str | None,
            Parameter(description="Only this metric", **_name(METRIC_PATTERN)),
        ] = None,
        stale: Annotated[bool, Parameter(description="Only stale devices and metrics")] = False,
        label: _LABEL_PARAMETER = None,
        limit: Annotated[
            int,
            Parameter(ge=1, le=catalog.SOURCES_MAX_LIMIT, description="Devices per page"),
        ] = catalog.SOURCES_LIMIT,
        cursor: Annotated[
            str | None,
            Parameter(
                description="The `next` of the previous page; omitted = the first page",
                schema_extra={"pattern": catalog.CURSOR_PATTERN},
            ),
        ] = None,
    ) -> Response[bytes]:
        # Label filters are ANDed: their order and repeats do not change the answer.
        query = (metric, stale, sorted(set(label or ())), limit, cursor)
        answer = await guard.shared(
            "sources",
            query,
            lambda: catalog.read_sources(ctx, metric, stale, label, limit=limit, cursor=cursor),
        )
        return json_answer(answer)

    return [access, metrics, metric_range, chart_data, sources]
