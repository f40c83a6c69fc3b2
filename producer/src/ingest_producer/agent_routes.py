"""The routes agents already speak: InfluxDB line protocol, Prometheus remote-write, OTLP/HTTP.

Each route decodes its body (``protocols``), checks every sample by the event rules and
appends the valid ones through the JSON API's appender (``agent_intake``); success is answered
only once the append succeeded. What each answer means to the agent that gets it:

InfluxDB (``POST /api/v2/write``, ``POST /write``; Telegraf, Home Assistant, the clients):
  204 every line enqueued. 400 ``{"code": "invalid", "message": ...}`` for a bad precision or
  a batch with bad lines: the valid lines ARE enqueued and every bad line (and every sample
  the event rules refuse: a bad metric, source or label name, a time outside the window) is
  written to the dead-letter stream with its raw line (or its fields) and the reason; the
  message names the first few. Telegraf and the clients drop a batch answered 400 and do not retry
  it: the valid part is stored, the rest is in the dead letters, nothing is duplicated. At
  most 1,000 dead letters are written per request (the 400 says how many were not). If
  writing them fails, the answer is a 503: the retry appends the valid lines again (with their
  timestamps the series are unchanged; lines without one are stamped anew) and records the
  bad ones.

Prometheus remote-write 1.0 (``POST /api/v1/write``): 204 when at least one sample was
  enqueued, even if others were refused; 400 (text) naming the refusals only when samples were
  refused and NONE could be enqueued. Prometheus drops a batch answered 4xx and retries a 5xx
  forever, so a refusal must never be a 5xx (one bad series would block the queue), and the
  valid samples are appended before any answer, so the 4xx loses nothing valid either way.
  A 400 for a mostly-good batch would only make Prometheus count all of it as failed and log
  an error for every batch carrying one bad series: the refusals are counted in
  ``ingest_producer_protocol_samples_total{outcome="refused"}`` and logged (throttled)
  instead. NaN, +-Inf and stale markers are skipped and counted, never a refusal. The 2.0
  content type (``proto=io.prometheus.write.v2.Request``) is answered 415 (Prometheus then
  falls back to 1.0 if configured with both).

OTLP/HTTP (``POST /v1/metrics``): 200 with an ``ExportMetricsServiceResponse`` in the
  request's content type; refused points (histograms, summaries, bad names, ...) are counted in
  ``partial_success.rejected_data_points`` with the first few reasons in ``error_message``
  (skipped NaN points as a warning with 0 rejected). 400 (a ``google.rpc.Status``) only for a
  body that cannot be read.

Shared: 503 with ``Retry-After`` for backpressure, the rate limit, Redis failing and the
durability wait (never 429 or 500 for these: every agent retries a 503); 413 for a body larger
than INGEST_PROTOCOL_MAX_BYTES as sent or once decompressed; 415 for an unknown
Content-Encoding (or an OTLP Content-Type other than protobuf or JSON); 401/403 as the JSON
API, with the key also accepted as ``Authorization: Token``, ``Basic`` and, on ``/write`` and
``/query``, the ``u``/``p`` query parameters (``auth.py``). These routes are left out of the
OpenAPI document: their bodies are the protocols' own.

``GET|HEAD /ping`` (204 with ``X-Influxdb-Version``), ``GET /api/v2/ready`` and a ``/query``
stub answering ``{"results": []}`` let InfluxDB clients that probe or ``CREATE DATABASE`` at
start carry on.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

import datetime as dt
import time
from typing import Any, Final

from litestar import MediaType, Request, Response, get, post, route
from litestar.exceptions import ClientException, HTTPException
from litestar.handlers import HTTPRouteHandler

from ingest_producer.agent_intake import Intake, listing
from ingest_producer.agent_replies import (
    influx_error,
    otlp_error,
    otlp_success,
    protocol_handlers,
    text_error,
)
from ingest_producer.appender import EventAppender
from ingest_producer.auth import ACCESS_OPT, CREDENTIALS_OPT, Access, Credentials
from ingest_producer.backlog import BacklogMonitor
from ingest_producer.cardinality import SeriesRegistry
from ingest_producer.protocols.lineprotocol import LineProtocolMapping, decode_line_protocol
from ingest_producer.protocols.otlp import OtlpMapping, decode_otlp_json, decode_otlp_protobuf
from ingest_producer.protocols.remotewrite import RemoteWriteMapping, decode_remote_write
from ingest_shared.redis_client import RedisClient
from ingest_shared.schema import TimeWindow
from ingest_shared.settings import Settings

# What /ping reports: the InfluxDB API version these routes follow (clients read it).
INFLUX_VERSION: Final = "2.7.0"
INFLUX_BUILD: Final = "telemetry-ingest"
V2_PRECISIONS: Final = ("ns", "us", "ms", "s")
V1_PRECISIONS: Final = ("n", "ns", "u", "us", "ms", "s", "m", "h")
REMOTE_WRITE_V2: Final = "io.prometheus.write.v2.request"
_SNAPPY: Final = frozenset({"", "snappy"})
_OTLP_TYPES: Final = {"application/x-protobuf": False, "application/json": True}
_NO_CONTENT: Final = 204


def agent_routes(
    settings: Settings,
    window: TimeWindow,
    appender: EventAppender,
    backlog: BacklogMonitor,
    redis: RedisClient,
    *,
    registry: SeriesRegistry,
) -> list[HTTPRouteHandler]:
    """Every agent protocol route, on the app's appender, backlog monitor and Redis."""
    intake = Intake(settings, window, appender, backlog, redis, registry=registry)
    return [
        *influx_routes(settings, intake),
        remote_write_route(settings, intake),
        otlp_route(settings, intake),
    ]


def _no_content() -> Response[Any]:
    return Response(None, status_code=_NO_CONTENT)


def influx_routes(settings: Settings, intake: Intake) -> list[HTTPRouteHandler]:
    """InfluxDB 2 and 1.x writes, and the probes their clients make."""
    mapping = LineProtocolMapping(
        source_tags=settings.influx_source_tags, default_source=settings.influx_default_source
    )
    handlers = protocol_handlers(influx_error)
    started = time.time()
    limits: dict[str, Any] = {
        "request_max_body_size": settings.protocol_max_bytes,
        "exception_handlers": handlers,
        "include_in_schema": False,
    }

    async def write(request: Request[Any, Any, Any], precisions: tuple[str, ...]) -> Response[Any]:
        intake.refuse_browser(request)
        intake.check_backlog()
        precision = request.query_params.get("precision") or "ns"
        if precision not in precisions:
            detail = f"unknown precision {precision[:20]!r}: use one of {', '.join(precisions)}"
            raise ClientException(detail=detail, status_code=400)
        body = await intake.read_body(request)
        _, checked = await intake.decode(
            lambda: decode_line_protocol(body, precision, mapping), len(body)
        )
        checked = await intake.append(request, checked)
        intake.count("influx", checked)
        if not checked.refused:
            return _no_content()
        written = await intake.dead_letter(checked.refused, "line protocol")
        unrecorded = len(checked.refused) - written
        lost = f" ({unrecorded} beyond the first {written} not recorded)" if unrecorded else ""
        message = (
            f"partial write: {len(checked.refused)} line(s) or sample(s) refused and "
            f"dead-lettered{lost}, {len(checked.events)} sample(s) enqueued: "
            f"{listing(checked.refused)}"
        )
        return influx_error(request, 400, message)

    @post("/api/v2/write", opt=_write_opt(Credentials.AGENT), **limits)
    async def influx_v2_write(request: Request[Any, Any, Any]) -> Response[Any]:
        # org and bucket are accepted and ignored: the service has one store.
        return await write(request, V2_PRECISIONS)

    @post("/write", opt=_write_opt(Credentials.AGENT_V1), **limits)
    async def influx_v1_write(request: Request[Any, Any, Any]) -> Response[Any]:
        # db, rp and consistency are accepted and ignored, as org and bucket above.
        return await write(request, V1_PRECISIONS)

    @route(
        "/ping",
        http_method=["GET", "HEAD"],
        status_code=_NO_CONTENT,
        include_in_schema=False,
        exception_handlers=handlers,
    )
    async def influx_ping() -> Response[None]:
        headers = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": INFLUX_BUILD}
        return Response(None, status_code=_NO_CONTENT, headers=headers)

    @get("/api/v2/ready", include_in_schema=False, exception_handlers=handlers)
    async def influx_ready() -> Response[dict[str, str]]:
        up = time.time() - started
        body = {
            "name": INFLUX_BUILD,
            "message": "ready for writes",
            "status": "ready",
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            "up": f"{up:.3f}s",
        }
        return Response(body, media_type=MediaType.JSON)

    @route(
        "/query",
        http_method=["GET", "POST"],
        opt=_write_opt(Credentials.AGENT_V1),
        include_in_schema=False,
        exception_handlers=handlers,
    )
    async def influx_query() -> Response[dict[str, list[object]]]:
        # Nothing is queried here: v1 clients and Telegraf's v1 output send CREATE DATABASE at
        # start and stop if it fails; reads go through the service's own API.
        return Response({"results": []}, status_code=200, media_type=MediaType.JSON)

    return [influx_v2_write, influx_v1_write, influx_ping, influx_ready, influx_query]


def remote_write_route(settings: Settings, intake: Intake) -> HTTPRouteHandler:
    """``POST /api/v1/write``: Prometheus remote-write 1.0."""
    mapping = RemoteWriteMapping(source_label=settings.prometheus_source_label)

    @post(
        "/api/v1/write",
        opt=_write_opt(Credentials.AGENT),
        request_max_body_size=settings.protocol_max_bytes,
        exception_handlers=protocol_handlers(text_error),
        include_in_schema=False,
    )
    async def prometheus_remote_write(request: Request[Any, Any, Any]) -> Response[Any]:
        content_type = (request.headers.get("content-type") or "").lower()
        if REMOTE_WRITE_V2 in content_type.replace(" ", ""):
            detail = (
                "remote-write 2.0 (io.prometheus.write.v2.Request) is not supported: send "
                "remote-write 1.0 (protobuf_message: prometheus.WriteRequest)"
            )
            raise HTTPException(detail=detail, status_code=415)
        encoding = (request.headers.get("content-encoding") or "").strip().lower()
        if encoding not in _SNAPPY:
            detail = f"unsupported Content-Encoding {encoding[:40]!r}: send snappy"
            raise HTTPException(detail=detail, status_code=415)
        intake.refuse_browser(request)
        intake.check_backlog()
        body = await request.body()
        _, checked = await intake.decode(
            lambda: decode_remote_write(body, mapping, intake.max_bytes), len(body)
        )
        checked = await intake.append(request, checked)
        intake.count("prometheus", checked)
        if checked.refused and not checked.events:
            message = (
                f"{checked.refused_count} sample(s) refused, none enqueued: "
                f"{listing(checked.refused)}"
            )
            return text_error(request, 400, message)
        return _no_content()

    return prometheus_remote_write


def otlp_route(settings: Settings, intake: Intake) -> HTTPRouteHandler:
    """``POST /v1/metrics``: OTLP/HTTP metrics, protobuf or JSON."""
    mapping = OtlpMapping(source_attributes=settings.otlp_source_attributes)

    @post(
        "/v1/metrics",
        status_code=200,
        opt=_write_opt(Credentials.AGENT),
        request_max_body_size=settings.protocol_max_bytes,
        exception_handlers=protocol_handlers(otlp_error),
        include_in_schema=False,
    )
    async def otlp_metrics(request: Request[Any, Any, Any]) -> Response[Any]:
        media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        is_json = _OTLP_TYPES.get(media)
        if is_json is None:
            detail = (
                f"unsupported Content-Type {media[:60]!r}: send application/x-protobuf or "
                "application/json"
            )
            raise HTTPException(detail=detail, status_code=415)
        intake.refuse_browser(request)
        intake.check_backlog()
        body = await intake.read_body(request)
        decode = decode_otlp_json if is_json else decode_otlp_protobuf
        decoded, checked = await intake.decode(lambda: decode(body, mapping), len(body))
        checked = await intake.append(request, checked)
        intake.count("otlp", checked)
        message = ""
        if checked.refused:
            message = f"{checked.refused_count} data point(s) refused: {listing(checked.refused)}"
        elif decoded.skipped:
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(decoded.skipped.items()))
            message = f"skipped: {skipped}"
        return otlp_success(request, checked.refused_count, message)

    return otlp_metrics


def _write_opt(credentials: Credentials) -> dict[str, Any]:
    return {ACCESS_OPT: Access.WRITE, CREDENTIALS_OPT: credentials}
