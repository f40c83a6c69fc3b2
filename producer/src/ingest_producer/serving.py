"""HTTP limits enforced on every connection, before a request reaches the app.

uvicorn has a keep-alive idle timeout (``timeout_keep_alive``, used as is) but, with httptools,
no limit on header size and no header or body read timeout; its ``limit_concurrency`` answers
503 only once a request's headers have arrived, so silent or slow sockets are never refused and
each holds a file descriptor. :class:`LimitedHttpProtocol` is uvicorn's own httptools protocol
plus what is missing:

- 431 when the request line and headers pass ``INGEST_HTTP_MAX_HEADER_BYTES``, counted as the
  bytes arrive, so a 64 MB header costs at most one socket read beyond the limit;
- 414 when the URL alone passes that limit, or 65,535 bytes (the most httptools' URL parser
  takes: uvicorn would answer a longer one with a plain-text 400), checked as it arrives;
- 400 in the JSON error shape, instead of uvicorn's plain text, for a request httptools cannot
  parse;
- 408 when the headers are not complete ``INGEST_HTTP_HEADER_TIMEOUT_S`` after the connection
  opened or after their first byte (a connection that sent nothing is closed without a word),
  or the body ``INGEST_HTTP_BODY_TIMEOUT_S`` after the headers;
- 503 at once, before reading anything, to a connection that would pass
  ``INGEST_HTTP_MAX_CONNECTIONS`` open connections of this process.

Each of these answers carries ``connection: close``; the connection is then half-closed and
what the client still sends is read and dropped for a moment, because closing a socket with
unread data makes the kernel send a reset, which can destroy the answer before it is read.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingest_producer.models import ErrorBody
from ingest_shared.schema import JSON_ENCODER

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ingest_shared.settings import Settings

logger = structlog.get_logger(__name__)

RETRY_AFTER_S = 1
# How long a refused connection is drained after its answer; at most MAX_LINGERING at once
# (beyond that they are closed at once: a flood must not hold descriptors for long).
LINGER_S = 1.0
MAX_LINGERING = 256
# Descriptors kept free beyond the connection cap: Redis connections, files, lingering refusals.
FD_RESERVE = 1_024
# Enforced limits are summed up in one log line per interval, however many clients hit them.
LOG_INTERVAL_S = 5.0
# httptools.parse_url refuses a URL of 65,536 bytes or more (its offsets are 16-bit).
URL_PARSER_MAX_BYTES = 65_535


def _error_body(status: int, detail: str) -> bytes:
    return JSON_ENCODER.encode(ErrorBody(status, detail))


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP/1.1 error response in the app's JSON error shape that closes the connection."""

    status_line: bytes
    rest: bytes  # our headers, the blank line, the body

    @classmethod
    def of(cls, status: int, reason: str, detail: str, *headers: str) -> Answer:
        body = _error_body(status, detail)
        fields = ["content-type: application/json", f"content-length: {len(body)}"]
        fields += ["connection: close", *headers]
        rest = "".join(f"{line}\r\n" for line in fields) + "\r\n"
        return cls(f"HTTP/1.1 {status} {reason}\r\n".encode(), rest.encode() + body)

    def render(self, common_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The bytes to send, with uvicorn's headers for every response (``date``)."""
        common = b"".join(b"%s: %s\r\n" % (name, value) for name, value in common_headers)
        return self.status_line + common + self.rest


@dataclass
class Guard:
    """The limits and the counters shared by all connections of one server process."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    lingering: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    _report: asyncio.TimerHandle | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.over_capacity = Answer.of(
            503,
            "Service Unavailable",
            f"too many open connections (INGEST_HTTP_MAX_CONNECTIONS={self.max_connections}); "
            f"retry after {RETRY_AFTER_S} s",
            f"retry-after: {RETRY_AFTER_S}",
        )
        head_detail = (
            f"request line and headers larger than {self.max_header_bytes} bytes "
            "(INGEST_HTTP_MAX_HEADER_BYTES)"
        )
        self.head_too_large_body = _error_body(431, head_detail)
        self.head_too_large = Answer.of(431, "Request Header Fields Too Large", head_detail)
        if self.max_header_bytes <= URL_PARSER_MAX_BYTES:
            url_limit = f"{self.max_header_bytes} bytes (INGEST_HTTP_MAX_HEADER_BYTES)"
        else:
            url_limit = f"{URL_PARSER_MAX_BYTES} bytes (the most the HTTP parser takes)"
        self.url_too_long = Answer.of(414, "URI Too Long", f"URL longer than {url_limit}")
        self.bad_request = Answer.of(
            400,
            "Bad Request",
            "malformed HTTP request: the request line or headers cannot be parsed",
        )
        self.head_timeout = Answer.of(
            408,
            "Request Timeout",
            f"headers not received within {self.header_timeout_s:g} s "
            "(INGEST_HTTP_HEADER_TIMEOUT_S)",
        )
        self.body_timeout = Answer.of(
            408,
            "Request Timeout",
            f"body not received within {self.body_timeout_s:g} s (INGEST_HTTP_BODY_TIMEOUT_S)",
        )

    @property
    def max_url_bytes(self) -> int:
        """The longest URL served: the head limit, or what the URL parser takes if less."""
        return min(self.max_header_bytes, URL_PARSER_MAX_BYTES)

    def count(self, what: str) -> None:
        """Log one enforcement at once; those that follow, summed, once per LOG_INTERVAL_S."""
        if self._report is None:
            logger.warning("http_limits_enforced", **{what: 1})
            self._report = asyncio.get_running_loop().call_later(LOG_INTERVAL_S, self._log)
        else:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _log(self) -> None:
        counts, self.counts = self.counts, {}
        if not counts:
            self._report = None
            return
        logger.warning("http_limits_enforced", interval_s=LOG_INTERVAL_S, **counts)
        self._report = asyncio.get_running_loop().call_later(LOG_INTERVAL_S, self._log)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit, read timeouts and a connection cap.

    Per connection it tracks the bytes of the request head being read and one deadline: the
    head's, or the body's, never both. A request whose head and body arrive in one read (the
    usual small POST) arms no timer at all beyond the one of a new connection.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: Guard,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard
        self._head_bytes = 0  # of the request head being read; 0 between requests
        self._in_body = False
        self._deadline: asyncio.TimerHandle | None = None
        self._draining = False
        self._lingering = False
        # What send_400_response answers instead of uvicorn's plain text (set by on_url).
        self._refusal: Answer | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self._guard
        if len(self.connections) >= guard.max_connections:
            self.transport = transport  # not counted as a connection: never added to the set
            guard.count("connections_refused")
            self._refuse(guard.over_capacity)
            return
        super().connection_made(transport)
        self._deadline = self.loop.call_later(guard.header_timeout_s, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._lingering:
            self._lingering = False
            self._guard.lingering -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._draining:  # refused while parsing (send_400_response)
            return
        if self._in_body:
            if self._deadline is None:
                self._deadline = self.loop.call_later(self._guard.body_timeout_s, self._expired)
        elif self._head_bytes:
            if self._head_bytes > self._guard.max_header_bytes:
                self._head_too_large()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(self._guard.header_timeout_s, self._expired)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._guard.max_url_bytes:
            # Refused as it arrives, before the parser gives up on it: raising here makes
            # uvicorn's data_received call send_400_response, which answers _refusal.
            self._guard.count("urls_too_long")
            self._refusal = self._guard.url_too_long
            raise _UrlTooLongError

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, in our JSON error shape."""
        answer, self._refusal = self._refusal or self._guard.bad_request, None
        if self._busy():
            self.transport.close()
        else:
            self._refuse(answer)

    def on_headers_complete(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        oversized = (
            self._head_bytes > self._guard.max_header_bytes
            and self._parsed_head_bytes() > self._guard.max_header_bytes
        )
        self._head_bytes = 0
        self._in_body = True
        if not oversized:
            super().on_headers_complete()
            return
        # The head ended inside the read that crossed the limit: answer through uvicorn's
        # request cycle, as it does for its own 503s.
        self._guard.count("headers_too_large")
        app, self.app = self.app, functools.partial(_head_too_large, self._guard)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _parsed_head_bytes(self) -> int:
        """The head just parsed, counted as ``METHOD url HTTP/1.1`` and ``name: value`` lines."""
        request_line = len(self.parser.get_method()) + len(self.url) + len(" HTTP/1.1\r\n") + 1
        fields = sum(len(name) + len(value) + len(": \r\n") for name, value in self.headers)
        return request_line + fields + len("\r\n")

    def _head_too_large(self) -> None:
        self._guard.count("headers_too_large")
        if self._busy():
            self.transport.close()
        else:
            self._refuse(self._guard.head_too_large)

    def _busy(self) -> bool:
        """Whether an earlier (pipelined) request of this connection is still being answered."""
        return self.cycle is not None and not self.cycle.response_complete

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        guard = self._guard
        if self._in_body:
            guard.count("body_timeouts")
            cycle = self.cycle
            if cycle is None or cycle.response_started or self.pipeline:
                self.transport.close()
                return
            # The app waits for the rest of the body: it gets http.disconnect, and whatever it
            # answers is dropped (uvicorn does the same when the client goes away).
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(guard.body_timeout)
        elif not self._head_bytes:
            guard.count("idle_closed")  # connected, sent nothing
            self.transport.close()
        else:
            guard.count("header_timeouts")
            if self._busy():
                self.transport.close()
            else:
                self._refuse(guard.head_timeout)

    def _refuse(self, answer: Answer) -> None:
        """Send ``answer``, half-close, and drop what the client still sends for LINGER_S."""
        self._draining = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(answer.render(self.server_state.default_headers))
        if self._guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._guard.lingering += 1
        self._lingering = True
        self._deadline = self.loop.call_later(LINGER_S, transport.close)


class _UrlTooLongError(Exception):
    """Raised in a parser callback to stop parsing a URL over the limit."""


async def _head_too_large(
    guard: Guard, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    body = guard.head_too_large_body
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def guard_for(settings: Settings, max_connections: int) -> Guard:
    """The limits of ``settings``, with the connection cap that fits the descriptor limit."""
    return Guard(
        max_header_bytes=settings.http_max_header_bytes,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        max_connections=max_connections,
    )


def http_protocol(guard: Guard) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http`` option: the limited protocol bound to ``guard``.

    A partial rather than a class made on the fly: uvicorn pickles its config into each worker
    process, and a partial of a module-level class pickles.
    """
    return cast("type[asyncio.Protocol]", functools.partial(LimitedHttpProtocol, guard=guard))


def fit_descriptor_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to hold ``max_connections``; the cap that fits.

    Without this, accept() fails once descriptors run out and clients hang or get resets
    instead of the 503. Worker processes inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fits = max(16, soft - min(FD_RESERVE, soft // 4))
    logger.warning(
        "http_max_connections_lowered",
        wanted=max_connections,
        effective=fits,
        open_files_limit=soft,
        hint="raise the hard limit (ulimit -Hn, LimitNOFILE=, --ulimit nofile=)",
    )
    return fits
