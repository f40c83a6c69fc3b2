"""``POST /api/ingest/events`` (the hot path) and ``POST /api/ingest/workers/process``.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec
from litestar import MediaType, Request, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse
from redis.exceptions import ResponseError

from ingest_producer import metrics
from ingest_producer.appender import AppendResult, EventAppender, NotDurable
from ingest_producer.auth import ACCESS_OPT, ANONYMOUS, Access
from ingest_producer.backlog import BacklogMonitor
from ingest_producer.cardinality import ANONYMOUS_CLIENT, Refusal, SeriesRegistry
from ingest_producer.errors import RETRY_AFTER_SECONDS, error_responses
from ingest_producer.jsonbody import (
    MAX_LISTED_ERRORS,
    IngestHeaders,
    batch_invalid,
    decode_array,
    decode_json,
    decode_ndjson,
    gunzip,
    ingest_headers,
    require_json,
)
from ingest_producer.models import Enqueued, ErrorBody, FieldError, Processed, ProcessRequest
from ingest_producer.openapi import ingest_operation, json_body_operation
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.functions import (
    Appended,
    Conflict,
    Duplicate,
    Idempotency,
    OverLimit,
    RateLimit,
    release_consumer,
)
from ingest_shared.keys import Keys, Shard
from ingest_shared.processor import BatchProcessor
from ingest_shared.redis_client import RedisClient, call_at
from ingest_shared.schema import (
    EVENT_DECODER,
    JSON_ENCODER,
    STAMP_AT_APPEND,
    EventOut,
    TelemetryEvent,
    TimeWindow,
    check_labels,
    now_ms,
)
from ingest_shared.settings import Settings
from ingest_shared.streams import Entry, ensure_group

# XREADGROUP's RESP2 reply as redis-py parses it: [[stream name, [(id, fields), ...]], ...]
StreamsReply: TypeAlias = list[tuple[bytes, list[Entry]]]
# Builds a 200 body from stream ids and the stored echo (see ``_single_body``).
Render: TypeAlias = Callable[[list[bytes], bytes], bytes]

PROCESS_DECODER = msgspec.json.Decoder(ProcessRequest)
CLIENT_ID = "client_id"  # set on request.state by auth.key_guard
REPLAYED_HEADER = "Idempotent-Replayed"
_WHITESPACE = b" \t\r\n"

_INGEST_ERRORS = {
    code: ResponseSpec(ErrorBody, description=description, generate_examples=False)
    for code, description in {
        413: (
            "Body larger than INGEST_MAX_BODY_BYTES as sent or once decompressed, more than "
            "INGEST_MAX_BATCH events, or more events than INGEST_RATE_LIMIT allows in a whole "
            "window (such a request can never pass: split it); nothing was enqueued"
        ),
        415: (
            "Content-Type is not JSON (application/json, application/*+json) or "
            "application/x-ndjson (or is missing while no API keys are configured: any web "
            "page could otherwise make a browser post here), or Content-Encoding is not gzip"
        ),
        422: (
            "Validation failed; `errors` names each field and, in a batch, the `index` of each "
            "invalid event (at most 100 listed); nothing was enqueued. Also a malformed "
            "Idempotency-Key, and events whose new series would pass a cardinality cap "
            "(INGEST_MAX_SERIES, INGEST_MAX_METRICS, INGEST_MAX_SERIES_PER_KEY: named in "
            "`detail` and each error)"
        ),
        429: (
            "The request's events do not fit in what is left of INGEST_RATE_LIMIT's current "
            "window for this API key (for this client address when auth is off), counted in "
            "events and shared by every producer; nothing was enqueued; the whole request fits "
            "after `Retry-After` seconds"
        ),
        503: (
            "Retry after `Retry-After` seconds; `detail` says which case applies. NOT "
            "enqueued: the workers are more than INGEST_MAX_BACKLOG entries behind, Redis "
            "could not be reached, refused the command (ACL) or is out of memory. MAY have been "
            "enqueued: Redis did not answer in time after the append was sent, or, with "
            "INGEST_DURABILITY, the AOF fsync or the replicas did not confirm it. Delivery is "
            "at least once: send an Idempotency-Key and retry with the same one, so a retry "
            "never duplicates"
        ),
    }.items()
}
_PROCESS_BODY = json_body_operation(ProcessRequest, "Which consumer reads, and how many entries.")
# Bound once: labels() on the hot path would cost a lookup per request.
_ACCEPTED = metrics.EVENTS_ACCEPTED
_REJECTED_INVALID = metrics.EVENTS_REJECTED.labels("invalid")
_REJECTED_RATE = metrics.EVENTS_REJECTED.labels("rate_limited")
_REJECTED_CONFLICT = metrics.EVENTS_REJECTED.labels("conflict")
_REJECTED_UNAVAILABLE = metrics.EVENTS_REJECTED.labels("unavailable")
_REJECTED_NOT_DURABLE = metrics.EVENTS_REJECTED.labels("not_durable")
_REJECTED_OVER_CAP = metrics.EVENTS_REJECTED.labels("over_cap")


class Guards:
    """Builds a request's idempotency guard and rate limit from the settings."""

    def __init__(self, settings: Settings) -> None:
        self._keys = settings.keys
        self._idempotency_ttl_ms = settings.idempotency_ttl_s * 1000
        self._rate_limit = settings.rate_limit
        self._rate_window_ms = settings.rate_window_ms

    def of(
        self, request: Request[Any, Any, Any], headers: IngestHeaders, body: bytes, echo: bytes
    ) -> tuple[Idempotency | None, RateLimit | None, Shard | None]:
        """Each None when not in use; ``echo`` is stored for repeats. The shard is where the
        guards' keys live and so where the request goes: one per client (per address for a
        rate limit without auth), so its records and its budget are found on every request."""
        if headers.idempotency_key is None and not self._rate_limit:
            return None, None, None
        client: str = request.state.get(CLIENT_ID, ANONYMOUS)
        # Without API keys, each client address has its own budget (behind a proxy, list it
        # in INGEST_TRUSTED_PROXIES so the address is the client's, not the proxy's).
        bucket = client if client != ANONYMOUS or not self._rate_limit else _address(request)
        shard = self._keys.shard_of_client(bucket)
        idempotency = None
        if headers.idempotency_key is not None:
            # Scoped by client: two clients may use the same key for different requests.
            scoped = hashlib.sha256(client.encode() + b"\n" + headers.idempotency_key)
            # NDJSON and a JSON array with the same bytes are different requests.
            body_hash = hashlib.sha256(b"ndjson\n" if headers.ndjson else b"json\n")
            body_hash.update(body)
            idempotency = Idempotency(
                shard.idempotency(scoped.hexdigest()),
                self._idempotency_ttl_ms,
                body_hash.hexdigest(),
                echo,
            )
        limit = None
        if self._rate_limit:
            limit = RateLimit(shard.rate_limit(bucket), self._rate_limit, self._rate_window_ms)
        return idempotency, limit, shard

    def check_size(self, events: int) -> None:
        """413 for a request with more events than the whole rate-limit window allows."""
        if self._rate_limit and events > self._rate_limit:
            raise _over_limit(events, self._rate_limit)


def _address(request: Request[Any, Any, Any]) -> str:
    client = request.client
    return f"addr:{client.host}" if client is not None else "addr:unknown"


def _over_limit(events: int, limit: int) -> HTTPException:
    detail = (
        f"{events} events in one request, but INGEST_RATE_LIMIT allows {limit} per window: "
        "it can never be accepted; split it into smaller requests. Nothing was enqueued"
    )
    return HTTPException(detail=detail, status_code=413)


def accept_batch(window: TimeWindow, events: list[TelemetryEvent]) -> list[EventOut]:
    """Every event as it will be enqueued, or a 422 naming each one outside the time window."""
    now = now_ms()
    accepted = []
    errors: list[FieldError] = []
    invalid = 0
    for index, event in enumerate(events):
        try:
            if event.occurredAt is None:
                # Stamped by the append function, in stream order (see ingest_append).
                labels = None if event.labels is None else check_labels(event.labels)
                out = EventOut(event.source, event.metric, event.value, STAMP_AT_APPEND, labels)
                accepted.append(out)
                continue
            accepted.append(window.accept(event, now))
        except InvalidEventError as exc:
            invalid += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(FieldError(exc.field, exc.reason, index))
    if invalid:
        raise batch_invalid(errors, invalid, len(events))
    return accepted


def enqueue_route(
    settings: Settings,
    window: TimeWindow,
    appender: EventAppender,
    backlog: BacklogMonitor,
    registry: SeriesRegistry,
) -> HTTPRouteHandler:
    """``POST /api/ingest/events``: validate one event or a batch and append it to the stream."""
    max_body, max_batch = settings.max_body_bytes, settings.max_batch
    guards = Guards(settings)
    capped = registry.enabled
    # Without write keys, any web page could make a browser post here with no Content-Type
    # (a "simple" cross-site request): then a JSON or NDJSON Content-Type is required.
    type_required = not settings.write_keys

    async def enqueue_batch(
        request: Request[Any, Any, Any],
        headers: IngestHeaders,
        body: bytes,
        events: list[TelemetryEvent],
    ) -> ASGIResponse:
        accepted = accept_batch(window, events)
        if not accepted:  # nothing to append, count or remember
            return _json(_batch_body([], b""))
        guards.check_size(len(accepted))
        if capped:
            await _admit(registry, request, accepted)
        idempotency, limit, shard = guards.of(request, headers, body, b"")
        try:
            result = await appender.append(accepted, idempotency, limit, shard)
        except Exception:
            _REJECTED_UNAVAILABLE.inc(len(accepted))
            raise
        return _respond(result, _batch_body, b"", len(accepted))

    @post(
        "/api/ingest/events",
        status_code=200,
        operation_class=ingest_operation(max_batch),
        responses={
            200: ResponseSpec(
                Enqueued,
                description=(
                    "Enqueued: `{id, value}` for one event, `{ids, count}` for a batch. "
                    f"A repeat of an Idempotency-Key answers the original body with "
                    f"`{REPLAYED_HEADER}: true`."
                ),
                generate_examples=False,
            ),
            **error_responses(400, 401, 403, 409, 500),
            **_INGEST_ERRORS,
        },
        tags=["ingest"],
        summary="Enqueue one telemetry event or a batch (JSON array or NDJSON, optionally gzip)",
        opt={ACCESS_OPT: Access.WRITE},
    )
    async def enqueue_events(request: Request[Any, Any, Any]) -> ASGIResponse:
        # The hot path: one pass over the headers, the body decoded once, nothing logged.
        if backlog.overloaded:
            raise _overloaded(backlog)
        headers = ingest_headers(request.scope, type_required=type_required)
        body = await request.body()
        if headers.gzip:
            body = gunzip(body, max_body)
        if headers.ndjson:
            return await enqueue_batch(request, headers, body, decode_ndjson(body, max_batch))
        first = body[:1]
        if first in _WHITESPACE:  # also b"": the decoder reports the empty body
            first = body.lstrip()[:1]
        if first == b"[":
            return await enqueue_batch(request, headers, body, decode_array(body, max_batch))
        try:
            out = window.accept(decode_json(body, EVENT_DECODER), now_ms())
        except (InvalidEventError, ValidationException):
            _REJECTED_INVALID.inc()
            raise
        if capped:
            await _admit(registry, request, [out])
        value = JSON_ENCODER.encode(out)
        idempotency, limit, shard = guards.of(request, headers, body, value)
        try:
            result = await appender.append([out], idempotency, limit, shard)
        except Exception:
            _REJECTED_UNAVAILABLE.inc()
            raise
        if type(result) is Appended:
            _ACCEPTED.inc()
            return _json(_single_body(result.ids, value))
        return _respond(result, _single_body, value, 1)

    return enqueue_events


def _single_body(ids: list[bytes], value: bytes) -> bytes:
    """``{"id": ..., "value": {...}}``, byte for byte what msgspec encodes for ``Enqueued``."""
    return b'{"id":"' + ids[0] + b'","value":' + value + b"}"


def _batch_body(ids: list[bytes], _: bytes) -> bytes:
    """``{"ids": [...], "count": n}`` (stream ids never need JSON escaping)."""
    if not ids:
        return b'{"ids":[],"count":0}'
    return b'{"ids":["' + b'","'.join(ids) + b'"],"count":' + str(len(ids)).encode() + b"}"


class _EncodedJson(ASGIResponse):
    """A 200 with an encoded JSON body, handed to the server as is. ASGIResponse's own
    constructor builds a mutable header map, ~4 us a response (measured): a twentieth of the
    single-event route's CPU. Here the headers are the two a JSON body needs, plus ``extra``."""

    __slots__ = ("_raw_headers",)

    def __init__(self, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        # No super().__init__(): every attribute the base class reads is set here.
        self.body = body
        self.status_code = 200
        self.content_length = len(body)
        self.background = None
        self.is_head_response = False
        self.encoding = "utf-8"
        self._encoded_cookies = ()
        self._raw_headers = [_JSON_TYPE, (b"content-length", b"%d" % len(body)), *extra]

    def encode_headers(self) -> list[tuple[bytes, bytes]]:
        return self._raw_headers


_JSON_TYPE = (b"content-type", MediaType.JSON.value.encode())
_REPLAYED = ((REPLAYED_HEADER.lower().encode(), b"true"),)


def _json(body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> ASGIResponse:
    return _EncodedJson(body, extra)


def _respond(result: AppendResult, render: Render, echo: bytes, events: int) -> ASGIResponse:
    """The response for every outcome of an append of ``events`` events (and its metrics)."""
    if isinstance(result, Appended):
        _ACCEPTED.inc(events)
        return _json(render(result.ids, echo))
    if isinstance(result, Duplicate):
        return _json(render(result.ids, result.echo), _REPLAYED)
    if isinstance(result, Conflict):
        _REJECTED_CONFLICT.inc(events)
        detail = "this Idempotency-Key was already used with a different body"
        raise HTTPException(detail=detail, status_code=409)
    if isinstance(result, NotDurable):
        metrics.DURABILITY_FAILURES.inc()
        _REJECTED_NOT_DURABLE.inc(events)
        detail = (
            f"not confirmed durable: {result.detail}; the events may be in the stream "
            "already (retry with the same Idempotency-Key to avoid duplicates)"
        )
        raise HTTPException(
            detail=detail, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    metrics.RATE_LIMITED.inc()
    _REJECTED_RATE.inc(events)
    if isinstance(result, OverLimit):
        raise _over_limit(events, result.limit)
    retry_after = max(1, math.ceil(result.retry_after_ms / 1000))
    raise HTTPException(
        detail=(
            "rate limit exceeded: these events do not fit in what is left of this window; "
            "nothing was enqueued, retry after Retry-After seconds"
        ),
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


def registry_client(registry: SeriesRegistry, request: Request[Any, Any, Any]) -> str:
    """The registry's name for the request's client (its key's, when keys have caps)."""
    if not registry.per_client:
        return ANONYMOUS_CLIENT  # request.state builds two objects: ~1.8 us, measured
    return registry.client_of(request.state.get(CLIENT_ID, ANONYMOUS), ANONYMOUS)


async def _admit(
    registry: SeriesRegistry, request: Request[Any, Any, Any], events: list[EventOut]
) -> None:
    """A 422 if an event would create a series beyond a cap (nothing is enqueued)."""
    client = registry_client(registry, request)
    unknown = registry.unknown(events, client)
    if unknown:
        refusals = await registry.admit(events, unknown, client, whole=True)
        if refusals:
            raise _over_cap(refusals, len(events))


def _over_cap(refusals: list[Refusal], total: int) -> ValidationException:
    """The 422 for a request holding events whose new series would pass a cap."""
    _REJECTED_OVER_CAP.inc(total)  # refused whole
    first = refusals[0]
    listed = [FieldError(r.field, r.message, r.at if total > 1 else None) for r in refusals]
    detail = (
        f"{len(refusals)} of {total} events would create series beyond {first.setting}="
        f"{first.limit}, nothing was enqueued: {first.message}"
    )
    return ValidationException(detail=detail, status_code=422, extra=listed[:MAX_LISTED_ERRORS])


def _overloaded(backlog: BacklogMonitor) -> HTTPException:
    metrics.BACKPRESSURE.inc()
    detail = (
        f"the workers are behind ({backlog.backlog} entries waiting, more than "
        f"INGEST_MAX_BACKLOG={backlog.max_backlog}); nothing was enqueued, retry later"
    )
    return HTTPException(
        detail=detail, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def process_route(
    redis: RedisClient,
    keys: Keys,
    group: str,
    processors: Sequence[BatchProcessor],
    *,
    type_required: bool = False,
) -> HTTPRouteHandler:
    """``POST /api/ingest/workers/process``: one batch through the worker's processor.

    ``processors`` are the shards' own, in shard order. With several shards it reads them in
    turn (starting one further on each call) until ``count`` entries were read. The consumer
    named in the request is deleted again from each shard read once it holds nothing pending,
    so callers inventing names cannot grow the groups without bound.
    """
    shards = keys.shards
    turns = itertools.count()

    @post(
        "/api/ingest/workers/process",
        status_code=200,
        operation_class=_PROCESS_BODY,
        responses=error_responses(400, 401, 403, 413, 415, 422, 500, 503),
        tags=["ingest"],
        summary="Process up to `count` new entries once, as the worker daemon does",
        opt={ACCESS_OPT: Access.WRITE},
    )
    async def process_entries(request: Request[Any, Any, Any]) -> Processed:
        require_json(request.scope, required=type_required)
        job = decode_json(await request.body(), PROCESS_DECODER)
        # int(): typed float so that 482.0 decodes (see models.WholeCount); an int already.
        count, consumer = int(job.count), job.consumer
        first = next(turns) % len(shards)
        done = [0, 0, 0, 0]  # read, processed, dead-lettered, acked
        for turn in range(len(shards)):
            index = (first + turn) % len(shards)
            shard = shards[index]
            entries = await read_new_entries(redis, shard.stream, group, consumer, count - done[0])
            result = await processors[index].process(entries, consumer)
            await release_consumer(redis, shard, group, consumer)
            counts = (result.read, result.processed, result.dead_lettered, result.acked)
            done = [a + b for a, b in zip(done, counts, strict=True)]
            if done[0] >= count:
                break
        return Processed(*done)

    return process_entries


async def read_new_entries(
    redis: RedisClient, stream: str, group: str, consumer: str, count: int
) -> list[Entry]:
    """Up to ``count`` never-delivered entries (``>``), without blocking.

    Creates the group (at ID 0) if it is missing, e.g. after the stream was deleted.
    """
    command = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, ">")
    try:
        reply: StreamsReply | None = await call_at(redis, stream, *command)
    except ResponseError as exc:
        if not str(exc).startswith("NOGROUP"):
            raise
        await ensure_group(redis, stream, group)
        reply = await call_at(redis, stream, *command)
    return reply[0][1] if reply else []
