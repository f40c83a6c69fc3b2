"""Reading request bodies by hand: headers, gzip, msgspec decoding, error mapping.

Handlers take the raw body and decode it with a module-level msgspec decoder: no DTO or
signature-model pass over the body on the hot path. Failures become HTTP exceptions that
``errors.py`` renders: 415 wrong Content-Type or Content-Encoding, 400 malformed or too deeply
nested JSON (or gzip), 413 too large once decompressed or too many events, 422 schema
violations naming every failing field (and, in a batch, the index of every failing event).

A request without Content-Type is read as JSON: small device clients often omit it, and
the body must still parse as a valid event.
"""

from __future__ import annotations

import re
import zlib
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import msgspec
from litestar.exceptions import ClientException, HTTPException, ValidationException

from ingest_producer import metrics
from ingest_producer.errors import validation_detail
from ingest_producer.models import FieldError
from ingest_shared.messages import describe, plain, split_location
from ingest_shared.schema import EVENT_DECODER, TelemetryEvent, labels_rule

if TYPE_CHECKING:
    from litestar.types import Scope

T = TypeVar("T", bound=msgspec.Struct)

_CONTENT_TYPE = b"content-type"
_CONTENT_ENCODING = b"content-encoding"
_IDEMPOTENCY_KEY = b"idempotency-key"
_JSON = b"application/json"
_NDJSON = b"application/x-ndjson"
_GZIP = (b"gzip", b"x-gzip")
# Content-Encoding: gzip, x-gzip or identity, in any case (content codings are case-insensitive),
# or empty (none). The OpenAPI document publishes this pattern.
CONTENT_ENCODING_PATTERN = (
    r"\A(?:[Gg][Zz][Ii][Pp]|[Xx]-[Gg][Zz][Ii][Pp]|[Ii][Dd][Ee][Nn][Tt][Ii][Tt][Yy])?\Z"
)
_KNOWN_ENCODING = re.compile(CONTENT_ENCODING_PATTERN.encode())
# Idempotency-Key: 1-256 printable ASCII characters, no space at either end (HTTP strips it);
# hashed, never stored as is. The OpenAPI document publishes this pattern.
IDEMPOTENCY_KEY_PATTERN = r"\A[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?\Z"
_PRINTABLE_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.encode())
# A batch with thousands of bad events gets this many errors listed, and the count of the rest.
MAX_LISTED_ERRORS = 100

BATCH_DECODER = msgspec.json.Decoder(list[TelemetryEvent])


class IngestHeaders(NamedTuple):
    """What the ingest route needs from the request headers, read in one pass."""

    ndjson: bool
    gzip: bool
    idempotency_key: bytes | None


def require_json(scope: Scope, *, required: bool = False) -> None:
    """Raise 415 unless the Content-Type is application/json or application/*+json, or absent
    and not ``required``."""
    for name, value in scope["headers"]:
        if name == _CONTENT_TYPE:
            if not _is_json(value):
                detail = f"unsupported Content-Type {_show(value)}; send application/json"
                raise HTTPException(detail=detail, status_code=415)
            return
    if required:
        raise _missing_content_type("application/json")


def _missing_content_type(wanted: str) -> HTTPException:
    # Without API keys, a body with no Content-Type (or a form type) is what any web page can
    # make a browser send to this service without asking it first (a "simple" request).
    detail = f"Content-Type is required without API keys; send {wanted}"
    return HTTPException(detail=detail, status_code=415)


def ingest_headers(scope: Scope, *, type_required: bool = False) -> IngestHeaders:
    """Content-Type (JSON or NDJSON, else 415; absent: JSON, unless ``type_required``),
    Content-Encoding (gzip or none, else 415) and Idempotency-Key (1-256 printable ASCII
    characters, else 422)."""
    ndjson = gzip = typed = False
    idempotency_key = None
    for name, value in scope["headers"]:
        if name == _CONTENT_TYPE:
            ndjson = _is_ndjson(value)
            typed = True
        elif name == _CONTENT_ENCODING:
            gzip = _is_gzip(value)
        elif name == _IDEMPOTENCY_KEY:
            idempotency_key = _idempotency_key(value)
    if type_required and not typed:
        raise _missing_content_type("application/json or application/x-ndjson")
    return IngestHeaders(ndjson, gzip, idempotency_key)


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


def _is_ndjson(content_type: bytes) -> bool:
    if _is_json(content_type):
        return False
    if content_type.split(b";", 1)[0].strip().lower() == _NDJSON:
        return True
    detail = (
        f"unsupported Content-Type {_show(content_type)}; "
        "send application/json or application/x-ndjson"
    )
    raise HTTPException(detail=detail, status_code=415)


def _is_gzip(content_encoding: bytes) -> bool:
    # No strip(): the HTTP server has already removed the whitespace around a header value.
    if _KNOWN_ENCODING.match(content_encoding):
        return content_encoding.lower() in _GZIP
    detail = f"unsupported Content-Encoding {_show(content_encoding)}; send gzip or none"
    raise HTTPException(detail=detail, status_code=415)


def _idempotency_key(value: bytes) -> bytes:
    if _PRINTABLE_KEY.match(value):
        return value
    message = "must be 1-256 printable ASCII characters, not starting or ending with a space"
    errors = [FieldError("Idempotency-Key", message)]
    raise ValidationException(detail=validation_detail(errors), status_code=422, extra=errors)


def _show(value: bytes) -> str:
    return repr(value[:100].decode("latin-1"))


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, never producing more than ``limit`` bytes (413 beyond it).

    Incremental, so a gzip bomb costs at most ``limit`` bytes of memory; several gzip members
    one after the other are read as one stream, as ``gzip -d`` does.
    """
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ClientException(detail=f"malformed gzip body: {exc}", status_code=400) from None
        size += len(part)
        if size > limit:
            detail = f"body larger than {limit} bytes once decompressed"
            raise HTTPException(detail=detail, status_code=413)
        if not inflater.eof:
            raise ClientException(detail="truncated gzip body", status_code=400)
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)


def decode_json(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode ``body`` into the decoder's Struct, or raise the matching 400/422 exception."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        errors = field_errors(body, decoder.type, exc)
        raise ValidationException(
            detail=validation_detail(errors), status_code=422, extra=errors
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _malformed(exc) from None


def _malformed(exc: msgspec.DecodeError | RecursionError, where: str = "") -> ClientException:
    # msgspec raises RecursionError for very deep nesting, even inside fields it would skip.
    if isinstance(exc, RecursionError):
        return ClientException(detail=f"JSON is nested too deeply{where}", status_code=400)
    return ClientException(detail=f"malformed JSON{where}: {exc}", status_code=400)


def decode_array(body: bytes, max_batch: int) -> list[TelemetryEvent]:
    """A JSON array of events, validated whole: 413 above ``max_batch``, 422 naming every
    invalid event by index, 400 if it is not JSON."""
    try:
        events = BATCH_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        # Error path only: decode untyped and check each event on its own.
        items = _decode_untyped(body)
        if not isinstance(items, list):  # e.g. whitespace then an object is not an array
            message = plain(split_location(str(exc))[1])
            raise batch_invalid([FieldError(None, message)], 1, 1) from None
        check_batch_size(len(items), max_batch)
        errors, invalid = _item_errors(items, exc)
        raise batch_invalid(errors, invalid, len(items)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _malformed(exc) from None
    check_batch_size(len(events), max_batch)
    return events


def decode_ndjson(body: bytes, max_batch: int) -> list[TelemetryEvent]:
    """One event per line (blank lines ignored), validated whole like :func:`decode_array`."""
    lines = [line for line in body.split(b"\n") if line and not line.isspace()]
    check_batch_size(len(lines), max_batch)
    events: list[TelemetryEvent] = []
    errors: list[FieldError] = []
    invalid = 0
    for index, line in enumerate(lines):
        try:
            events.append(EVENT_DECODER.decode(line))
        except msgspec.ValidationError as exc:
            invalid += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors += _indexed(field_errors(line, TelemetryEvent, exc), index)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _malformed(exc, f" in event {index}") from None
    if invalid:
        raise batch_invalid(errors, invalid, len(lines))
    return events


def check_batch_size(count: int, max_batch: int) -> None:
    """413 when a batch has more than ``max_batch`` events."""
    if count > max_batch:
        detail = f"{count} events in one request; at most {max_batch} (INGEST_MAX_BATCH)"
        raise HTTPException(detail=detail, status_code=413)


def batch_invalid(errors: list[FieldError], invalid: int, total: int) -> ValidationException:
    """The 422 for a batch in which ``invalid`` of ``total`` events failed validation."""
    listed = errors[:MAX_LISTED_ERRORS]
    first = "; ".join(
        f"event {e.index}: {e.field or 'event'}: {e.message}" if e.index is not None else e.message
        for e in listed[:3]
    )
    detail = f"validation failed for {invalid} of {total} events, nothing was enqueued: {first}"
    if len(listed) > 3:
        detail += "; ..."
    metrics.EVENTS_REJECTED.labels("invalid").inc(total)  # a batch is refused whole
    return ValidationException(detail=detail, status_code=422, extra=listed)


def _decode_untyped(body: bytes) -> object:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _malformed(exc) from None


def _item_errors(
    items: list[object], error: msgspec.ValidationError
) -> tuple[list[FieldError], int]:
    """The errors of every invalid item (listed up to MAX_LISTED_ERRORS), and their count."""
    errors: list[FieldError] = []
    invalid = 0
    for index, item in enumerate(items):
        try:
            msgspec.convert(item, TelemetryEvent)
        except msgspec.ValidationError as exc:
            invalid += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors += _indexed(_fields_of(item, TelemetryEvent, exc), index)
    if not invalid:  # convert and the JSON decoder disagreed: report the decoder's words
        field, message = split_location(str(error))
        return [FieldError(field, plain(message))], 1
    return errors, invalid


def _indexed(errors: list[FieldError], index: int) -> list[FieldError]:
    return [FieldError(e.field, e.message, index) for e in errors]


def field_errors(body: bytes, struct: type[T], error: msgspec.ValidationError) -> list[FieldError]:
    """Every failing field of ``body``, not only the first one msgspec stops at.

    Error path only: the body is decoded again untyped and each field converted on its own.
    """
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raw = None
    return _fields_of(raw, struct, error)


def _fields_of(raw: object, struct: type[T], error: msgspec.ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    if isinstance(raw, dict):
        for info in msgspec.structs.fields(struct):
            name = info.encode_name
            if name not in raw:
                if info.required:
                    errors.append(FieldError(name, "required field is missing"))
                continue
            try:
                msgspec.convert(raw[name], info.type)
            except msgspec.ValidationError as exc:
                errors.append(FieldError(name, _field_words(name, info.type, str(exc))))
    if not errors:
        field, message = split_location(str(error))
        errors.append(FieldError(field, _in_words(struct, field, message)))
    return errors


def _field_words(name: str, annotation: object, message: str) -> str:
    """msgspec's ``message`` about one field, in words; a label set's rule depends on where in
    it the error is (a name, a value, the count), which the location tells."""
    if name == "labels":
        return labels_rule(message)
    return describe(annotation, split_location(message)[1])


def _in_words(struct: type[T], field: str | None, message: str) -> str:
    """msgspec's ``message`` about ``field`` of ``struct`` (None: the whole body), in words."""
    if field is None:
        return describe(struct, message)
    types = {info.encode_name: info.type for info in msgspec.structs.fields(struct)}
    return describe(types[field], message) if field in types else plain(message)
