"""OpenAPI corrections for what Litestar cannot infer.

Litestar documents a request body only when the handler takes a ``data`` argument, which
would also make it decode the body through its signature model. Our routes decode with
msgspec themselves, so their Operation states the body schema, taken from the same Struct
the decoder uses. And Litestar documents a 400 for parameter errors, which we answer with 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from ingest_producer.models import BatchEnqueued
from ingest_shared.schema import TelemetryEvent

_REF_TEMPLATE = "#/components/schemas/{name}"


def json_body_operation(struct: type[msgspec.Struct], description: str) -> type[Operation]:
    """An Operation class whose requestBody is ``struct``'s JSON schema (a flat Struct)."""
    _, components = msgspec.json.schema_components([struct], ref_template=_REF_TEMPLATE)
    if len(components) != 1:
        msg = f"{struct.__name__} refers to other Structs; inline schemas cannot hold them"
        raise TypeError(msg)
    request_body = {
        "description": description,
        "required": True,
        "content": {"application/json": {"schema": components[struct.__name__]}},
    }

    @dataclass
    class JsonBodyOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = request_body
            return schema

    return JsonBodyOperation


@dataclass
class ParameterOperation(Operation):
    """For routes with query parameters: their errors are 422 (see ``errors.py``), not 400."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema.get("responses", {}).pop("400", None)
        return schema


def _inline_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components([struct], ref_template=_REF_TEMPLATE)
    return dict(components[struct.__name__])


def ingest_operation(max_batch: int) -> type[Operation]:
    """The Operation of ``POST /api/ingest/events``: one event, a JSON array or NDJSON (each
    optionally gzip), the Idempotency-Key and Content-Encoding headers, and both 200 shapes."""
    event = _inline_schema(TelemetryEvent)
    batch = {"type": "array", "items": event, "maxItems": max_batch}
    example = (
        '{"source":"sensor-a","metric":"cpu","value":12.5,"occurredAt":"2026-03-19T12:00:00Z"}\n'
        '{"source":"sensor-a","metric":"mem","value":71.0}\n'
    )
    request_body = {
        "description": (
            "One event (an object), or a batch: a JSON array, or `application/x-ndjson` with "
            "one event per line (blank lines are ignored). `occurredAt` (RFC 3339, naive = "
            "UTC) defaults to the time of receipt; it may be at most INGEST_MAX_CLOCK_SKEW_MS "
            "in the future and no older than INGEST_RETENTION_MS. A batch is validated whole: "
            "if any event is invalid the answer is 422 with the `index` of each failing event "
            f"and nothing is enqueued. At most INGEST_MAX_BATCH ({max_batch}) events (else "
            "413). With `Content-Encoding: gzip` the limit INGEST_MAX_BODY_BYTES applies to the "
            "body both as sent and decompressed (413). Content-Type: application/json, "
            "application/*+json, none (read as JSON), or application/x-ndjson."
        ),
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [event, batch]}},
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "One event object per line."},
                "example": example,
            },
        },
    }
    parameters = [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": (
                "Makes retries safe. A repeat with the same key (per API key) within "
                "INGEST_IDEMPOTENCY_TTL_S answers the original response body (same ids, same "
                "occurredAt) and enqueues nothing; the check and the append are one atomic "
                "step, so concurrent repeats enqueue once. The same key with a different body "
                "(compared by a SHA-256 of the decompressed body bytes, so re-serialised JSON "
                "counts as different) is 409."
            ),
            "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[ -~]+$"},
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": "`gzip` to send a compressed body.",
            "schema": {"type": "string", "enum": ["gzip", "identity"]},
        },
    ]
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    }
    batch_response = _inline_schema(BatchEnqueued)

    @dataclass
    class IngestOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = request_body
            schema["parameters"] = [*schema.get("parameters", []), *parameters]
            responses = schema.get("responses", {})
            if "200" in responses:
                content = responses["200"]["content"]["application/json"]
                content["schema"] = {"oneOf": [content["schema"], batch_response]}
            for code in ("429", "503"):
                if code in responses:
                    responses[code]["headers"] = retry_after
            return schema

    return IngestOperation
