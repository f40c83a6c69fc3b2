"""``POST /api/ingest/events`` (the hot path) and ``POST /api/ingest/workers/process``.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

from typing import Any, TypeAlias

import msgspec
from litestar import MediaType, Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ingest_producer.appender import EventAppender
from ingest_producer.errors import error_responses
from ingest_producer.jsonbody import decode_json, require_json
from ingest_producer.models import Enqueued, ProcessRequest
from ingest_producer.openapi import json_body_operation
from ingest_shared.processor import BatchProcessor, BatchResult
from ingest_shared.redis_client import call
from ingest_shared.schema import EVENT_DECODER, JSON_ENCODER, TelemetryEvent, TimeWindow, now_ms
from ingest_shared.streams import Entry, ensure_group

# XREADGROUP's RESP2 reply as redis-py parses it: [[stream name, [(id, fields), ...]], ...]
StreamsReply: TypeAlias = list[tuple[bytes, list[Entry]]]

PROCESS_DECODER = msgspec.json.Decoder(ProcessRequest)

_EVENT_BODY = json_body_operation(
    TelemetryEvent,
    "A reading. `occurredAt` (RFC 3339, naive = UTC) defaults to the time of receipt; it may "
    "be at most INGEST_MAX_CLOCK_SKEW_MS in the future and no older than INGEST_RETENTION_MS. "
    "Content-Type: application/json, application/*+json, or none.",
)
_PROCESS_BODY = json_body_operation(ProcessRequest, "Which consumer reads, and how many entries.")


def enqueue_route(window: TimeWindow, appender: EventAppender) -> HTTPRouteHandler:
    """``POST /api/ingest/events``: validate one event and append it to the stream."""

    @post(
        "/api/ingest/events",
        status_code=200,
        operation_class=_EVENT_BODY,
        responses={
            200: ResponseSpec(Enqueued, description="Enqueued", generate_examples=False),
            **error_responses(400, 413, 415, 422, 500, 503),
        },
        tags=["ingest"],
        summary="Enqueue one telemetry event",
    )
    async def enqueue_event(request: Request[Any, Any, Any]) -> ASGIResponse:
        # The hot path: the body is decoded once by msgspec, nothing is logged.
        require_json(request.scope)
        event = decode_json(await request.body(), EVENT_DECODER)
        out = window.accept(event, now_ms())
        entry_id = await appender.append(out)
        body = JSON_ENCODER.encode(Enqueued(entry_id.decode(), out))
        # Already encoded: handed to the server as is, without Response's rendering step.
        return ASGIResponse(body=body, media_type=MediaType.JSON)

    return enqueue_event


def process_route(
    redis: Redis, stream: str, group: str, processor: BatchProcessor
) -> HTTPRouteHandler:
    """``POST /api/ingest/workers/process``: one batch through the worker's processor."""

    @post(
        "/api/ingest/workers/process",
        status_code=200,
        operation_class=_PROCESS_BODY,
        responses=error_responses(400, 413, 415, 422, 500, 503),
        tags=["ingest"],
        summary="Process up to `count` new entries once, as the worker daemon does",
    )
    async def process_entries(request: Request[Any, Any, Any]) -> BatchResult:
        require_json(request.scope)
        job = decode_json(await request.body(), PROCESS_DECODER)
        entries = await read_new_entries(redis, stream, group, job.consumer, job.count)
        return await processor.process(entries, job.consumer)

    return process_entries


async def read_new_entries(
    redis: Redis, stream: str, group: str, consumer: str, count: int
) -> list[Entry]:
    """Up to ``count`` never-delivered entries (``>``), without blocking.

    Creates the group (at ID 0) if it is missing, e.g. after the stream was deleted.
    """
    command = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, ">")
    try:
        reply: StreamsReply | None = await call(redis, *command)
    except ResponseError as exc:
        if not str(exc).startswith("NOGROUP"):
            raise
        await ensure_group(redis, stream, group)
        reply = await call(redis, *command)
    return reply[0][1] if reply else []
