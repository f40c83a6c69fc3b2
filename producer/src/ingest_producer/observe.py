"""Per-request observation: a request id on the response and on every log line of the
request, and the request metrics; plus ``GET /metrics``. Being the one wrapper around the whole
app, it also refuses an API query parameter given twice (``reading.params``).

One raw ASGI wrapper around the whole app, so routing errors (404, 405) and errors turned
into responses by the exception handlers are counted with their real status. It costs a few
microseconds per request: metric children are looked up once per (route, method, status), not
through ``labels()`` on every request.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Response, get
from litestar.enums import ScopeType
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ingest_producer import metrics
from ingest_producer.errors import validation_detail
from ingest_producer.models import ErrorBody
from ingest_producer.reading import params
from ingest_shared.schema import JSON_ENCODER

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from ingest_producer.models import FieldError

REQUEST_ID_HEADER = b"x-request-id"
# The service's own routes (not the agent protocols', nor /health or /metrics).
API_PREFIX = "/api/ingest/"
# A client's id is kept when it is short and plain (it ends up in logs); else one is made.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
UNMATCHED_ROUTE = "unmatched"


class RequestObserver:
    """Wraps an ASGI app: request ids always, request metrics when ``count`` is True."""

    def __init__(self, app: ASGIApp, *, count: bool) -> None:
        self._app = app
        self._count = count
        # Unique across processes and restarts without a random call per request.
        self._prefix = os.urandom(4).hex()
        self._numbers = itertools.count(1)
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    def _request_id(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and _CLIENT_ID.fullmatch(value):
                return bytes(value)
        return b"%s-%x" % (self._prefix.encode(), next(self._numbers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id.decode())
        status = 500  # what the client sees if the app fails without answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        started = time.perf_counter()
        try:
            repeated = _repeated_parameter(scope)
            if repeated is None:
                await self._app(scope, receive, send_with_id)
            else:
                await _answer_422(repeated, send_with_id)
        finally:
            if self._count:
                route = scope.get("path_template") or UNMATCHED_ROUTE
                method: str = scope.get("method", "GET")
                self._observe(route, method, status, time.perf_counter() - started)

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = metrics.REQUESTS.labels(route, method, str(status))
            self._counters[route, method, status] = counter
        counter.inc()
        duration = self._durations.get(route)
        if duration is None:
            duration = self._durations[route] = metrics.REQUEST_DURATION.labels(route)
        duration.observe(seconds)


def _repeated_parameter(scope: Scope) -> FieldError | None:
    """A one-value query parameter of an API route given twice (Litestar would take the last
    value silently). Checked here, around the whole app, so that every route of ours refuses it
    the same way; the agent protocols' routes keep their own conventions."""
    query: bytes = scope.get("query_string", b"")
    if not query or not scope["path"].startswith(API_PREFIX):
        return None
    return params.repeated_parameter(query)


async def _answer_422(error: FieldError, send: Send) -> None:
    body = JSON_ENCODER.encode(ErrorBody(422, validation_detail([error]), [error]))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# Litestar appends "; charset=utf-8" to every text/* type: give it the type without one, so
# the header names the charset once (prometheus_client's constant already has it).
_METRICS_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def metrics_route(multiprocess_dir: str | None) -> HTTPRouteHandler:
    """``GET /metrics``: open, like ``/health`` (restrict it at the network level)."""

    @get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (requests, events, Redis errors, queue gauges)",
        media_type=_METRICS_TYPE,
    )
    async def prometheus_metrics() -> Response[bytes]:
        registry = REGISTRY
        if multiprocess_dir is not None:
            # Every uvicorn process writes its values under the directory; sum them here.
            registry = CollectorRegistry()
            MultiProcessCollector(registry, multiprocess_dir)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=_METRICS_TYPE)

    return prometheus_metrics
