"""The worker's own HTTP endpoint: ``GET /metrics`` (Prometheus) and ``GET /health``.

A few lines of asyncio rather than a web framework: the worker image carries no Litestar, and
two fixed GET routes need no more. Each connection answers one request and closes; the request
head is bounded in size and time, so a slow or hostile client costs one socket for a few
seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ingest_worker.metrics import LAST_PROGRESS

if TYPE_CHECKING:
    from collections.abc import Callable

HEAD_LIMIT_BYTES = 8_192
HEAD_TIMEOUT_S = 5.0
# The loop beats at least once per blocking read; silence past this means it is stuck or
# Redis has been gone that long.
DEFAULT_MAX_SILENCE_S = 30.0


class Heartbeat:
    """When the worker loop last finished a Redis step; ``/health`` reads it."""

    def __init__(
        self,
        max_silence_s: float = DEFAULT_MAX_SILENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_silence_s = max_silence_s
        self._clock = clock
        self._last = clock()
        self._last_wall = time.time()
        LAST_PROGRESS.set_function(lambda: self._last_wall)

    def beat(self) -> None:
        """The loop made progress (a read returned, possibly empty after blocking)."""
        self._last = self._clock()
        self._last_wall = time.time()

    def silence_s(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def healthy(self) -> bool:
        """True while the last beat is recent enough."""
        return self.silence_s() <= self.max_silence_s


class HealthBody(msgspec.Struct, gc=False):
    """``/health``'s answer."""

    status: str
    silence_s: float
    max_silence_s: float


_ENCODER = msgspec.json.Encoder()
_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (status, _REASONS[status], content_type.encode(), len(body))
    )
    return head + body


def route(method: str, path: str, heartbeat: Heartbeat) -> bytes:
    """The whole HTTP response to one request."""
    path = path.split("?", 1)[0]
    if path not in ("/metrics", "/health"):
        return _response(404, "application/json", b'{"status":"not found"}')
    if method not in ("GET", "HEAD"):
        return _response(405, "application/json", b'{"status":"method not allowed"}')
    if path == "/metrics":
        return _response(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
    healthy = heartbeat.healthy()
    body = HealthBody(
        "ok" if healthy else "stalled", round(heartbeat.silence_s(), 3), heartbeat.max_silence_s
    )
    return _response(200 if healthy else 503, "application/json", _ENCODER.encode(body))


async def start_monitor(host: str, port: int, heartbeat: Heartbeat) -> asyncio.Server:
    """Listen on ``host:port``; the caller closes the server. Raises OSError if it cannot bind."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            writer.write(route(method, path, heartbeat))
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass  # a client that sent no (complete, sane) request head gets nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=HEAD_LIMIT_BYTES)
