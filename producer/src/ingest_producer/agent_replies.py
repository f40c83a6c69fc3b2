"""Response bodies in each agent protocol's own shape, errors included.

An agent logs the body of a refusal, so each protocol gets the shape its clients print:
InfluxDB's JSON ``{"code": ..., "message": ...}``, plain text for Prometheus remote-write,
and for OTLP a ``google.rpc.Status`` (errors) or an ``ExportMetricsServiceResponse``
(success, with ``partial_success``) in the request's own content type, protobuf or JSON.

:func:`protocol_handlers` gives a route the app's exception handlers (``errors.py``: which
Redis failure is a 503, what is logged and counted) with the body re-rendered in its shape.
A ``ProtocolError`` (a body that cannot be read) is a 400, a ``BodyTooLargeError`` a 413.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec
from google.protobuf import json_format
from litestar import MediaType, Response
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from ingest_producer.errors import exception_handlers
from ingest_shared.exceptions import BodyTooLargeError, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from litestar import Request
    from litestar.types import ExceptionHandlersMap

    # Renders (request, status, message, headers) as a protocol's error response.
    Render = Callable[[Request[Any, Any, Any], int, str, dict[str, str]], Response[bytes]]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"
# InfluxDB 2's error codes, by HTTP status (its API's "code" field).
_INFLUX_CODES: Final = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    415: "unsupported media type",
    422: "unprocessable entity",
    429: "too many requests",
    503: "unavailable",
}
# google.rpc.Code, by HTTP status (the mapping of the OTLP and gRPC-HTTP specifications).
_RPC_CODES: Final = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    413: 8,  # RESOURCE_EXHAUSTED
    415: 3,
    422: 3,
    429: 8,
    503: 14,  # UNAVAILABLE
}
_RPC_INTERNAL: Final = 13


class _Detail(msgspec.Struct):
    detail: str = ""


_DETAIL_DECODER: Final = msgspec.json.Decoder(_Detail)


def influx_error(
    _: Request[Any, Any, Any], status: int, message: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """InfluxDB 2's error body: ``{"code": "invalid", "message": ...}``."""
    code = _INFLUX_CODES.get(status, "internal error")
    body = msgspec.json.encode({"code": code, "message": message})
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def text_error(
    _: Request[Any, Any, Any], status: int, message: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """Plain text, as Prometheus logs a remote-write refusal."""
    return Response(message.encode(), status_code=status, media_type=TEXT, headers=headers)


def wants_json(request: Request[Any, Any, Any]) -> bool:
    """True when an OTLP request is JSON (the answer is then JSON too), else protobuf."""
    content_type = request.headers.get("content-type") or ""
    return content_type.split(";", 1)[0].strip().lower() == JSON


def otlp_error(
    request: Request[Any, Any, Any],
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A ``google.rpc.Status`` (code and message) in the request's content type."""
    code = _RPC_CODES.get(status, _RPC_INTERNAL)
    if wants_json(request):
        body = msgspec.json.encode({"code": code, "message": message})
        return Response(body, status_code=status, media_type=JSON, headers=headers)
    return Response(
        _rpc_status(code, message), status_code=status, media_type=PROTOBUF, headers=headers
    )


def _rpc_status(code: int, message: str) -> bytes:
    """``google.rpc.Status{code, message}`` encoded by hand: its generated class ships in
    googleapis-common-protos, which the producer does not otherwise need."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def otlp_success(request: Request[Any, Any, Any], rejected: int, message: str) -> Response[bytes]:
    """``ExportMetricsServiceResponse``: ``partial_success`` set when points were refused
    (``rejected`` of them) or ``message`` warns of something."""
    reply = ExportMetricsServiceResponse()
    if rejected or message:
        reply.partial_success.rejected_data_points = rejected
        reply.partial_success.error_message = message
    if wants_json(request):
        body = json_format.MessageToJson(reply, indent=None).encode()
        return Response(body, status_code=200, media_type=JSON)
    return Response(reply.SerializeToString(), status_code=200, media_type=PROTOBUF)


def protocol_handlers(render: Render) -> ExceptionHandlersMap:
    """The app's exception handlers with every error body rendered by ``render``."""
    base = exception_handlers()

    def rerender(request: Request[Any, Any, Any], response: Response[Any]) -> Response[bytes]:
        content = response.content
        try:
            detail = _DETAIL_DECODER.decode(content).detail if isinstance(content, bytes) else ""
        except msgspec.DecodeError:
            detail = ""
        headers = {str(name): str(value) for name, value in response.headers.items()}
        return render(request, response.status_code or 500, detail or "error", headers)

    def wrap(exception_type: type[Exception] | int) -> Callable[..., Response[bytes]]:
        handler = base[exception_type]

        def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
            return rerender(request, handler(request, exc))

        return handle

    def on_protocol_error(request: Request[Any, Any, Any], exc: ProtocolError) -> Response[bytes]:
        status = 413 if isinstance(exc, BodyTooLargeError) else 400
        return render(request, status, str(exc), {})

    handlers: ExceptionHandlersMap = {key: wrap(key) for key in base}
    handlers[ProtocolError] = on_protocol_error
    return handlers
