"""Refusals before the app, over real sockets: every one is a JSON error body naming its limit.

An oversized head, a URL too long for the limit or for the URL parser, and a request httptools
cannot parse get the same ``{"status_code", "detail", "errors"}`` body as the app's errors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.integration.test_http_limits import connection, head, producer, read_until_closed

if TYPE_CHECKING:
    from pathlib import Path

    from redis.asyncio import Redis


def status_and_body(answer: bytes) -> tuple[bytes, dict[str, object]]:
    """The status line and the JSON body of a raw HTTP answer."""
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower(), answer[:300]
    decoded: dict[str, object] = json.loads(body)
    return status, decoded


async def send_raw(port: int, data: bytes) -> bytes:
    async with connection(port) as (reader, writer):
        writer.write(data)
        return await read_until_closed(reader, wait_s=5)


async def test_refusals_before_the_app_are_json_errors_naming_their_limit(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    limit = 16_384  # the default
    async with producer(redis_url, tmp_path / "producer.log") as served:
        # Headers over the limit that never end: refused while they arrive.
        endless = head("/health").removesuffix(b"\r\n") + b"X-Pad: " + b"a" * (limit + 100)
        unfinished = await send_raw(served.port, endless)
        long_url = await send_raw(served.port, head("/health?x=" + "a" * 70_000))
        malformed = await send_raw(served.port, b"GET /health HTTP/1.1\r\nNo colon\r\n\r\n")
        fits = await send_raw(served.port, head("/health?x=" + "a" * 10_000, Connection="close"))

    assert status_and_body(unfinished) == (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        {
            "status_code": 431,
            "detail": f"request line and headers larger than {limit} bytes "
            "(INGEST_HTTP_MAX_HEADER_BYTES)",
            "errors": [],
        },
    )
    assert status_and_body(long_url) == (
        b"HTTP/1.1 414 URI Too Long",
        {
            "status_code": 414,
            "detail": f"URL longer than {limit} bytes (INGEST_HTTP_MAX_HEADER_BYTES)",
            "errors": [],
        },
    )
    status, body = status_and_body(malformed)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body["status_code"] == 400
    assert "malformed HTTP request" in str(body["detail"])
    assert fits.startswith(b"HTTP/1.1 200 ")


async def test_a_url_past_what_the_parser_takes_is_414_even_under_a_larger_head_limit(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with producer(
        redis_url, tmp_path / "producer.log", max_header_bytes=str(131_072)
    ) as served:
        parsable = await send_raw(
            served.port, head("/health?x=" + "a" * 60_000, Connection="close")
        )
        too_long = await send_raw(served.port, head("/health?x=" + "a" * 70_000))

    assert parsable.startswith(b"HTTP/1.1 200 "), parsable[:200]
    assert status_and_body(too_long) == (
        b"HTTP/1.1 414 URI Too Long",
        {
            "status_code": 414,
            "detail": "URL longer than 65535 bytes (the most the HTTP parser takes)",
            "errors": [],
        },
    )
