"""Exception handlers: every error is a JSON ``ErrorBody``, never a stack trace.

400  malformed JSON, nesting too deep         (ClientException)
404/405/413/415                                (Litestar's HTTPException subclasses)
422  schema or time-window violation          (ValidationException, InvalidEventError)
503  Redis unreachable, hanging or busy        (transient RedisError/OSError,
     + ``Retry-After``                          TransientStoreError)
503  too many heavy reads in this process      (ReadsBusyError)
     + ``Retry-After``
503  Redis refused the command (NOPERM), is out of memory, or answered MOVED: the detail says
     which, and one error line is logged per interval (never "Redis is unavailable")
500  anything else; logged with its traceback
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import MediaType, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import MovedError, NoPermissionError, OutOfMemoryError, RedisError

from ingest_producer import metrics
from ingest_producer.models import ErrorBody, FieldError
from ingest_shared.exceptions import (
    InvalidEventError,
    OutcomeUnknownError,
    ReadsBusyError,
    TransientStoreError,
)
from ingest_shared.schema import JSON_ENCODER
from ingest_shared.streams import is_transient

if TYPE_CHECKING:
    from collections.abc import Sequence

    from litestar import Request
    from litestar.types import ExceptionHandlersMap

RETRY_AFTER_SECONDS = 1
INGEST_PATH = "/api/ingest/events"
# One "redis_unavailable" warning per interval, however many requests fail meanwhile.
UNAVAILABLE_LOG_INTERVAL_S = 5.0

_DESCRIPTIONS = {
    400: "Malformed JSON, or JSON nested too deeply",
    401: "No API key, or an unknown one (Authorization: Bearer <key> or X-API-Key)",
    403: "The API key may only read",
    404: "No such route",
    409: "The Idempotency-Key was used before with a different body",
    413: "Body larger than INGEST_MAX_BODY_BYTES (1 MiB by default)",
    415: "Content-Type is not application/json (or another +json type)",
    422: "The body or a query parameter failed validation; `errors` names each field",
    429: "Rate limit exceeded; retry after `Retry-After` seconds",
    500: "Unexpected server error (logged; no details are returned)",
    503: (
        "Redis is unreachable or too slow, the backlog exceeds INGEST_MAX_BACKLOG, or the "
        "durability wait failed; retry after `Retry-After` seconds"
    ),
}

logger = structlog.get_logger(__name__)


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries documenting the error responses a route can give."""
    return {
        code: ResponseSpec(ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
        for code in status_codes
    }


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """The JSON error response every handler returns."""
    body = ErrorBody(status_code, detail, list(errors))
    return Response(
        JSON_ENCODER.encode(body),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def validation_detail(errors: Sequence[FieldError]) -> str:
    """One readable line summing up ``errors``."""
    return "validation failed: " + "; ".join(f"{e.field or 'body'}: {e.message}" for e in errors)


def _field_errors(extra: object) -> list[FieldError]:
    """Ours are FieldErrors already; Litestar's parameter errors are dicts with key/message."""
    if not isinstance(extra, list):
        return []
    errors: list[FieldError] = []
    for item in extra:
        if isinstance(item, FieldError):
            errors.append(item)
        elif isinstance(item, dict):
            key = item.get("key")
            errors.append(FieldError(None if key is None else str(key), str(item.get("message"))))
    return errors


class _Throttle:
    """Says when an event may be logged again and how many were skipped meanwhile."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next = 0.0
        self._skipped = 0

    def due(self) -> int | None:
        """The number skipped since the last time, if it is time to log; else None."""
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return None
        skipped, self._skipped, self._next = self._skipped, 0, now + self._interval_s
        return skipped


# Redis answered, but not with what the request needed: (metric kind, log event, 503 detail).
_REFUSALS: tuple[tuple[type[RedisError], str, str, str], ...] = (
    (
        NoPermissionError,
        "permission",
        "redis_permission_denied",
        "Redis refused a command to this service's user (NOPERM: {error}); nothing was "
        "enqueued. Check the ACL of the user in REDIS_URL",
    ),
    (
        OutOfMemoryError,
        "out_of_memory",
        "redis_out_of_memory",
        "Redis is out of memory (maxmemory reached); nothing was enqueued, retry later",
    ),
    (
        MovedError,
        "moved",
        "redis_moved",
        "Redis answered MOVED ({error}): in single-node mode, REDIS_URL names a Redis Cluster "
        "node (set INGEST_REDIS_MODE=cluster); on a cluster, a slot moved twice in a row "
        "(a failover or resharding): retry",
    ),
)


def exception_handlers() -> ExceptionHandlersMap:
    """The app's exception handlers; their throttling state is per app."""
    throttle = _Throttle(UNAVAILABLE_LOG_INTERVAL_S)
    refusal_throttles = {kind: _Throttle(UNAVAILABLE_LOG_INTERVAL_S) for _, kind, *_ in _REFUSALS}
    unavailable = metrics.REDIS_ERRORS.labels("unavailable")

    def on_refused(request: Request[Any, Any, Any], exc: RedisError) -> Response[bytes] | None:
        """The 503 for a refusal Redis explained, or None if ``exc`` is not one."""
        for error_type, kind, event, detail in _REFUSALS:
            if isinstance(exc, error_type):
                metrics.REDIS_ERRORS.labels(kind).inc()
                skipped = refusal_throttles[kind].due()
                if skipped is not None:
                    logger.error(event, error=str(exc), path=request.scope["path"], skipped=skipped)
                return error_response(
                    503,
                    detail.format(error=exc),
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
        return None

    def on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        errors = _field_errors(exc.extra)
        if isinstance(exc, ValidationException) and exc.status_code == 400:
            # Litestar's own parameter validation (e.g. ?count=0): a schema violation.
            detail = validation_detail(errors) if errors else exc.detail
            return error_response(422, detail, errors)
        return error_response(exc.status_code, exc.detail, errors, exc.headers)

    def on_invalid_event(_: Request[Any, Any, Any], exc: InvalidEventError) -> Response[bytes]:
        errors = [FieldError(exc.field, exc.reason)]
        return error_response(422, validation_detail(errors), errors)

    def on_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        cause = exc.__cause__ if isinstance(exc, TransientStoreError) else exc
        if isinstance(cause, RedisError) and (refused := on_refused(request, cause)) is not None:
            return refused
        if not (isinstance(exc, TransientStoreError) or is_transient(exc)):
            return on_unexpected(request, exc)
        unavailable.inc()
        if isinstance(exc, OutcomeUnknownError):
            detail = (
                "Redis did not answer in time: the events MAY have been enqueued; retry with the "
                "same Idempotency-Key to avoid duplicates"
            )
        elif request.scope["path"] == INGEST_PATH:
            detail = "Redis is unavailable, nothing was enqueued; retry later"
        else:
            detail = "Redis is unavailable; retry later"
        skipped = throttle.due()
        if skipped is not None:
            logger.warning(
                "redis_unavailable",
                error=str(exc),
                error_type=type(exc).__name__,
                path=request.scope["path"],
                skipped=skipped,
            )
        return error_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def on_reads_busy(_: Request[Any, Any, Any], exc: ReadsBusyError) -> Response[bytes]:
        return error_response(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        if is_transient(exc) or isinstance(exc, NoPermissionError | MovedError):
            return on_unavailable(request, exc)
        if isinstance(exc, RedisError):
            metrics.REDIS_ERRORS.labels("other").inc()
        logger.error("unhandled_error", path=request.scope["path"], exc_info=exc)
        return error_response(500, "Internal server error")

    return {
        HTTPException: on_http_exception,
        InvalidEventError: on_invalid_event,
        ReadsBusyError: on_reads_busy,
        TransientStoreError: on_unavailable,
        RedisError: on_unavailable,
        Exception: on_unexpected,
    }
