"""The OpenAPI document: what Litestar cannot infer, and the step that makes it exact for clients.

Litestar documents a request body only when the handler takes a ``data`` argument, which
would also make it decode the body through its signature model. Our routes decode with
msgspec themselves, so their Operation states the body schema, taken from the same Struct
the decoder uses. And Litestar documents a 400 for parameter errors, which we answer with 422.

The code keeps one definition of each rule, in Python's terms; :func:`publishable` translates
the whole document on its way out (``PublishedOpenAPIConfig``):

* ``pattern``: Python anchors names with ``\\A...\\Z`` (``$`` also matches before a trailing
  newline). JSON Schema patterns are ECMA-262, where ``\\A`` and ``\\Z`` are the letters A and
  Z, so they are published as ``^...$``; any other Python-only syntax is refused here.
* ``{"type": "number", "multipleOf": 1}`` is how msgspec describes a count that takes 482.0
  as well as 482; JSON Schema calls exactly those values ``integer``, and so does the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPI, Operation

from ingest_producer.jsonbody import CONTENT_ENCODING_PATTERN, IDEMPOTENCY_KEY_PATTERN
from ingest_producer.models import BatchEnqueued
from ingest_producer.reading.params import EPOCH_MS_PATTERN
from ingest_shared.schema import TelemetryEvent

_REF_TEMPLATE = "#/components/schemas/{name}"
# Python syntax ECMA-262 reads differently or not at all: anchors, named groups, comments and
# inline flags.
_PYTHON_ONLY = re.compile(r"\\[AZ]|\(\?P|\(\?#|\(\?[aiLmsux]")
NDJSON = "application/x-ndjson"
# Query parameters that take epoch milliseconds or an RFC 3339 time (reading.params.epoch_ms).
TIME_PARAMETER = {
    "oneOf": [
        {"type": "string", "pattern": EPOCH_MS_PATTERN},
        {"type": "string", "format": "date-time"},
    ]
}


def ecma_pattern(pattern: str) -> str:
    """``pattern`` (Python's ``re``) as ECMA-262 with the same meaning: ``\\A...\\Z`` -> ``^...$``.

    Raises ValueError for syntax without a plain ECMA-262 equivalent.
    """
    published = pattern
    if published.startswith("\\A"):
        published = "^" + published[2:]
    if published.endswith("\\Z") and not published.endswith("\\\\Z"):
        published = published[:-2] + "$"
    if _PYTHON_ONLY.search(published):
        msg = f"pattern {pattern!r} uses Python-only syntax; it cannot be published as is"
        raise ValueError(msg)
    return published


def publishable(node: Any) -> Any:
    """A copy of an OpenAPI document (or any part of it) as clients must read it."""
    if isinstance(node, list):
        return [publishable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: publishable(value) for key, value in node.items()}
    # A property named "pattern" holds a schema (a dict), never a string.
    if isinstance(out.get("pattern"), str):
        out["pattern"] = ecma_pattern(out["pattern"])
    if out.get("type") == "number" and out.get("multipleOf") == 1:
        out["type"] = "integer"
        del out["multipleOf"]
    return out


@dataclass
class PublishedOpenAPI(OpenAPI):
    """The document, translated by :func:`publishable` whenever it is rendered."""

    def to_schema(self) -> dict[str, Any]:
        document: dict[str, Any] = publishable(super().to_schema())
        return document


@dataclass
class PublishedOpenAPIConfig(OpenAPIConfig):
    """OpenAPIConfig whose document is a :class:`PublishedOpenAPI`."""

    def to_openapi_schema(self) -> OpenAPI:
        base = super().to_openapi_schema()
        return PublishedOpenAPI(**{f.name: getattr(base, f.name) for f in fields(base)})


def json_body_operation(
    struct: type[msgspec.Struct], description: str, constraints: dict[str, Any] | None = None
) -> type[Operation]:
    """An Operation class whose requestBody is ``struct``'s JSON schema (a flat Struct), plus
    ``constraints`` the Struct cannot state (e.g. a ``oneOf`` over its fields)."""
    _, components = msgspec.json.schema_components([struct], ref_template=_REF_TEMPLATE)
    if len(components) != 1:
        msg = f"{struct.__name__} refers to other Structs; inline schemas cannot hold them"
        raise TypeError(msg)
    request_body = {
        "description": description,
        "required": True,
        "content": {
            "application/json": {"schema": {**components[struct.__name__], **(constraints or {})}}
        },
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
            "one event per line (blank lines are ignored). `occurredAt` (RFC 3339; naive is "
            "also accepted, as UTC) defaults to the time of receipt; it may be at most "
            "INGEST_MAX_CLOCK_SKEW_MS in the future and no older than INGEST_RETENTION_MS "
            "(else 422: a window relative to the server's clock, which JSON Schema cannot "
            "state). A batch is validated whole: if any event is invalid the answer is 422 with "
            "the `index` of each failing event and nothing is enqueued. At most "
            f"INGEST_MAX_BATCH ({max_batch}) events (else 413). With `Content-Encoding: gzip` "
            "the body described here is sent gzip-compressed, and the limit "
            "INGEST_MAX_BODY_BYTES applies to it both as sent and decompressed (413). "
            "Content-Type: application/json, application/*+json, none (read as JSON), or "
            "application/x-ndjson."
        ),
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [event, batch]}},
            NDJSON: {
                # OpenAPI 3.2's reading of a sequential media type: the schema describes the
                # whole stream as an array of its items (here: lines).
                "schema": {
                    **batch,
                    "description": "The events, one JSON object per line (this array's items).",
                },
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
                "counts as different) is 409. 1-256 printable ASCII characters, no space at "
                "either end (else 422)."
            ),
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": (
                "`gzip` (or its alias `x-gzip`): the body is gzip-compressed (concatenated gzip "
                "members are read as one stream; a corrupt or truncated one is 400). "
                "`identity`, empty or no header: not compressed. Any case (content codings are "
                "case-insensitive); anything else is 415."
            ),
            "schema": {"type": "string", "pattern": CONTENT_ENCODING_PATTERN},
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
