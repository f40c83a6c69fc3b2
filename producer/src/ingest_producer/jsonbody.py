"""Reading JSON request bodies by hand: Content-Type check, msgspec decoding, error mapping.

Handlers take the raw body and decode it with a module-level msgspec decoder: no DTO or
signature-model pass over the body on the hot path. Failures become HTTP exceptions that
``errors.py`` renders: 415 wrong Content-Type, 400 malformed or too deeply nested JSON,
422 schema violations naming every failing field.

A request without Content-Type is read as JSON: small device clients often omit it, and
the body must still parse as a valid event.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeVar

import msgspec
from litestar.exceptions import ClientException, HTTPException, ValidationException

from ingest_producer.errors import validation_detail
from ingest_producer.models import FieldError

if TYPE_CHECKING:
    from litestar.types import Scope

T = TypeVar("T", bound=msgspec.Struct)

_CONTENT_TYPE = b"content-type"
_JSON = b"application/json"
# msgspec appends the location of the failing value: "Expected `float`, got `str` - at `$.value`"
_AT_PATH = re.compile(r"\A(?P<message>.*?) - at `\$\.?(?P<path>[^`]*)`\Z", re.DOTALL)


def require_json(scope: Scope) -> None:
    """Raise 415 unless the Content-Type is absent, application/json or application/*+json."""
    for name, value in scope["headers"]:
        if name == _CONTENT_TYPE:
            media = value.split(b";", 1)[0].strip().lower()
            if media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json")):
                return
            detail = f"unsupported Content-Type {value.decode('latin-1')!r}; send application/json"
            raise HTTPException(detail=detail, status_code=415)


def decode_json(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode ``body`` into the decoder's Struct, or raise the matching 400/422 exception."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        errors = field_errors(body, decoder.type, exc)
        raise ValidationException(
            detail=validation_detail(errors), status_code=422, extra=errors
        ) from None
    except msgspec.DecodeError as exc:
        raise ClientException(detail=f"malformed JSON: {exc}", status_code=400) from None
    except RecursionError:
        # msgspec raises it for very deep nesting, even inside fields it would skip.
        raise ClientException(detail="JSON is nested too deeply", status_code=400) from None


def field_errors(body: bytes, struct: type[T], error: msgspec.ValidationError) -> list[FieldError]:
    """Every failing field of ``body``, not only the first one msgspec stops at.

    Error path only: the body is decoded again untyped and each field converted on its own.
    """
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raw = None
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
                errors.append(FieldError(name, _split(str(exc))[1]))
    if not errors:
        field, message = _split(str(error))
        errors.append(FieldError(field, message))
    return errors


def _split(message: str) -> tuple[str | None, str]:
    """(field path or None, message without msgspec's location suffix)."""
    match = _AT_PATH.match(message)
    if match is None:
        return None, message
    return match["path"] or None, match["message"]
