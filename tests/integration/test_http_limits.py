"""HTTP limits of a real ``ingest-producer`` process, over real sockets.

Hostile clients are refused cheaply: slow or silent sockets are timed out, huge headers are
cut off while they arrive, and connections beyond the cap get a 503 at once; meanwhile
normal clients are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from tests.ports import free_port

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

HOST = "127.0.0.1"
EVENTS = "/api/ingest/events"
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.5}
STREAM = Settings().stream_key
START_TIMEOUT_S = 20.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Producer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mib(self) -> float:
        rss: int = psutil.Process(self.process.pid).memory_info().rss
        return rss / MIB

    def logs(self) -> list[dict[str, object]]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def log_events(self, event: str) -> list[dict[str, object]]:
        return [entry for entry in self.logs() if entry.get("event") == event]

    def errors_logged(self) -> list[dict[str, object]]:
        levels = ("error", "critical")
        return [entry for entry in self.logs() if entry.get("level") in levels]


def raise_own_descriptor_limit(wanted: int) -> None:
    """Enough file descriptors in this process for the test's sockets (CI runs as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def spawn(
    env: dict[str, str], log: Path, open_files: tuple[int, int] | None
) -> subprocess.Popen[bytes]:
    """``ingest-producer``, started with the (soft, hard) open-file limit ``open_files``."""
    binary = str(Path(sys.executable).parent / "ingest-producer")
    argv = [binary]
    if open_files is not None:
        set_limit = "resource.setrlimit(resource.RLIMIT_NOFILE, ({}, {}))".format(*open_files)
        argv = [
            sys.executable,
            "-c",
            f"import os, resource; {set_limit}; os.execv({binary!r}, [{binary!r}])",
        ]
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


@contextlib.asynccontextmanager
async def producer(
    redis_url: str, log: Path, open_files: tuple[int, int] | None = None, **limits: str
) -> AsyncIterator[Producer]:
    """An ``ingest-producer`` with ``limits`` as INGEST_HTTP_* variables, ready to serve."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    port = free_port()
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_LOG_FORMAT": "json",
        "INGEST_STREAM_SHARDS": "1",  # the test reads the one stream
        **{f"INGEST_HTTP_{name.upper()}": value for name, value in limits.items()},
    }
    running = Producer(spawn(env, log, open_files), port, log)
    process = running.process
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, running.logs()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the producer did not start"
                await asyncio.sleep(0.1)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def post_event(url: str) -> tuple[int, float]:
    """POST one event on a new connection: (status, seconds it took)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        response = await http.post(EVENTS, json=EVENT)
    return response.status_code, time.monotonic() - started


async def read_until_closed(reader: asyncio.StreamReader, wait_s: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65_536), wait_s):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def head(path: str = "/health", method: str = "GET", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: producer"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- slow and silent clients --------------------------------------------------------------


def open_slow_sockets(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each start a request and stop in the middle of its headers."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=10)
            sockets.append(sock)
            sock.sendall(b"POST /api/ingest/events HTTP/1.1\r\nHost: producer\r\nX-Slow: ")
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def drip(sockets: list[socket.socket], stop: asyncio.Event) -> None:
    """One more header byte on every socket each second, until stopped or closed by the server."""
    while not stop.is_set():
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.send(b"a")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def what_each_got(sockets: list[socket.socket]) -> dict[str, int]:
    """Per socket: answered 408, closed without an answer, or still open."""
    outcome = {"408": 0, "closed": 0, "open": 0}
    for sock in sockets:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            outcome["open"] += 1
            continue
        except ConnectionResetError:
            data = b""
        outcome["408" if data.startswith(b"HTTP/1.1 408 ") else "closed"] += 1
    return outcome


@pytest.mark.slow
async def test_3000_slow_header_sockets_leave_normal_clients_served_within_a_second(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    slow, timeout_s = 3000, 4.0
    raise_own_descriptor_limit(slow + 1024)
    async with producer(
        redis_url, tmp_path / "producer.log", header_timeout_s=str(timeout_s)
    ) as served:
        idle_rss = served.rss_mib()
        started = time.monotonic()
        sockets = await asyncio.to_thread(open_slow_sockets, served.port, slow)
        opened = time.monotonic()
        stop = asyncio.Event()
        dripping = asyncio.create_task(drip(sockets, stop))
        try:
            answers = []
            for _ in range(3):  # while all 3,000 are still open
                answers.append(await post_event(served.url))
                await asyncio.sleep(0.5)
            busy_rss = served.rss_mib()
            assert time.monotonic() - started < timeout_s, "too slow to test within the timeout"
            await asyncio.sleep(opened + timeout_s + 1.5 - time.monotonic())
            outcome = what_each_got(sockets)
            after = await post_event(served.url)
        finally:
            stop.set()
            await dripping
            for sock in sockets:
                sock.close()
        refused = served.log_events("http_limits_enforced")

    print(f"RSS idle {idle_rss:.0f} MiB, with {slow} slow sockets {busy_rss:.0f} MiB; {answers}")
    assert [status for status, _ in answers] == [200, 200, 200]
    assert max(seconds for _, seconds in answers) < 1.0, answers
    # Every slow socket was timed out and told so; the producer serves on.
    assert outcome == {"408": slow, "closed": 0, "open": 0}
    assert after[0] == 200
    assert refused, "the timeouts were not logged"
    assert sum(int(str(entry.get("header_timeouts", 0))) for entry in refused) >= 1
    assert await redis.xlen(STREAM) == 4


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with (
        producer(redis_url, tmp_path / "producer.log", header_timeout_s="1") as served,
        connection(served.port) as (reader, _),
    ):
        started = time.monotonic()
        data = await read_until_closed(reader, wait_s=5)
        waited = time.monotonic() - started

    assert data == b""  # nothing was asked, nothing is answered
    assert 0.9 < waited < 2.0, waited


async def test_a_slow_body_is_answered_408_and_nothing_is_enqueued(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    body = json.dumps(EVENT).encode()
    async with (
        producer(redis_url, tmp_path / "producer.log", body_timeout_s="1") as served,
        connection(served.port) as (reader, writer),
    ):
        writer.write(
            head(EVENTS, "POST", Content_Type="application/json", Content_Length=str(len(body)))
        )
        writer.write(body[:10])  # and never the rest
        started = time.monotonic()
        answer = await read_until_closed(reader, wait_s=5)
        waited = time.monotonic() - started
        still_served = await post_event(served.url)
        errors = served.errors_logged()

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"INGEST_HTTP_BODY_TIMEOUT_S" in answer
    assert 0.9 < waited < 2.0, waited
    assert still_served[0] == 200
    assert errors == []
    assert await redis.xlen(STREAM) == 1  # only the later, complete request


# --- keep-alive ---------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with (
        producer(redis_url, tmp_path / "producer.log", keepalive_s="1") as served,
        connection(served.port) as (reader, writer),
    ):
        writer.write(head("/health"))
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 200 "), status
        length = int(next(
            line.split(b":")[1] for line in status.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ))  # fmt: skip
        await reader.readexactly(length)
        # The connection stays open for the next request ...
        writer.write(head("/health"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200"
        )
        await reader.readexactly(length)
        # ... and is closed once it has been idle for INGEST_HTTP_KEEPALIVE_S.
        started = time.monotonic()
        rest = await read_until_closed(reader, wait_s=5)
        idle = time.monotonic() - started

    assert rest == b""
    assert 0.9 < idle < 2.0, idle


# --- header size --------------------------------------------------------------------------


async def test_headers_up_to_the_limit_pass_and_one_byte_more_is_431(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    limit = 4096
    async with producer(redis_url, tmp_path / "producer.log", max_header_bytes=str(limit)) as p:

        def padded(size: int) -> bytes:
            return head("/health", Connection="close", X_Pad="x" * size)

        async def get_with_header_of(size: int) -> bytes:
            async with connection(p.port) as (reader, writer):
                writer.write(padded(size))
                return await read_until_closed(reader, wait_s=5)

        small = await get_with_header_of(100)
        # The limit counts the request line, the header lines and the blank line after them.
        fits = limit - len(padded(0))
        at_limit = await get_with_header_of(fits)
        over = await get_with_header_of(fits + 1)

    assert small.startswith(b"HTTP/1.1 200 ")
    assert at_limit.startswith(b"HTTP/1.1 200 "), at_limit[:200]
    assert over.startswith(b"HTTP/1.1 431 "), over[:200]
    assert b"INGEST_HTTP_MAX_HEADER_BYTES" in over


async def test_a_64_mb_header_is_refused_at_once_with_little_memory(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    huge = memoryview(b"GET /health HTTP/1.1\r\nHost: producer\r\nX-Huge: " + b"a" * (64 * MIB))
    peak = 0.0

    async with producer(redis_url, tmp_path / "producer.log") as served:
        stop = asyncio.Event()

        async def sample_rss() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, served.rss_mib())
                await asyncio.sleep(0.01)

        async def send_huge_header() -> tuple[bytes, float]:
            started = time.monotonic()
            async with connection(served.port) as (reader, writer):

                async def push() -> None:
                    with contextlib.suppress(ConnectionError):
                        for offset in range(0, len(huge), MIB):
                            writer.write(huge[offset : offset + MIB])
                            await writer.drain()

                pushing = asyncio.create_task(push())  # all 64 MB, while the answer is read
                answer = await asyncio.wait_for(reader.read(4096), 5)
                answered = time.monotonic() - started
                await pushing
            return answer, answered

        async def health() -> float:
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=served.url, timeout=5) as http:
                assert (await http.get("/health")).status_code == 200
            return time.monotonic() - started

        sampler = asyncio.create_task(sample_rss())
        try:
            checking = asyncio.create_task(health())
            answers = await asyncio.gather(*(send_huge_header() for _ in range(8)))
            health_s = await checking
        finally:
            stop.set()
            await sampler

    print(f"8 x 64 MB headers: peak RSS {peak:.0f} MiB, answers in {[s for _, s in answers]} s")
    for answer, seconds in answers:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert seconds < 1.0
    assert health_s < 1.0
    assert peak < 150, f"producer RSS reached {peak:.0f} MiB"


# --- connection cap -----------------------------------------------------------------------


async def test_connections_beyond_the_cap_get_503_at_once_and_the_next_one_fits_again(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    cap = 20
    async with producer(
        redis_url, tmp_path / "producer.log", max_connections=str(cap), header_timeout_s="30"
    ) as served:
        held = await asyncio.to_thread(open_slow_sockets, served.port, cap)
        try:
            await asyncio.sleep(0.2)  # every one of them accepted
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=served.url, timeout=5) as http:
                refused = await http.post(EVENTS, json=EVENT)
            refused_in = time.monotonic() - started
            held.pop().close()
            await asyncio.sleep(0.2)
            fits = await post_event(served.url)
        finally:
            for sock in held:
                sock.close()
        logged = served.log_events("http_limits_enforced")

    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert "INGEST_HTTP_MAX_CONNECTIONS=20" in refused.json()["detail"]
    assert refused_in < 1.0
    assert fits[0] == 200
    assert [entry.get("connections_refused") for entry in logged] == [1]
    assert await redis.xlen(STREAM) == 1


async def test_the_producer_raises_its_open_file_limit_or_lowers_the_cap_to_fit(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # Soft 1024 (the usual default) and a hard limit of 2048, below the 4096 + 1024 wanted.
    async with producer(redis_url, tmp_path / "producer.log", open_files=(1024, 2048)) as served:
        soft, hard = psutil.Process(served.process.pid).rlimit(psutil.RLIMIT_NOFILE)
        lowered = served.log_events("http_max_connections_lowered")

    assert (soft, hard) == (2048, 2048)
    assert [(entry["wanted"], entry["effective"]) for entry in lowered] == [(4096, 1536)]


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("INGEST_HTTP_HEADER_TIMEOUT_S", "0", "must be more than 0 seconds"),
        ("INGEST_HTTP_BODY_TIMEOUT_S", "-1", "between 0 and 3600"),
        ("INGEST_HTTP_MAX_HEADER_BYTES", "100", "between 1024 and 1048576"),
        ("INGEST_HTTP_KEEPALIVE_S", "0", "between 1 and 3600"),
        ("INGEST_HTTP_MAX_CONNECTIONS", "many", "is not an integer"),
    ],
)
def test_a_bad_http_limit_names_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as raised:
        load_settings({name: value})
    assert name in str(raised.value)
