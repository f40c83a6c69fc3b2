"""Browser fixtures: Debian's chromium driven by Playwright, and a real producer over HTTP.

Playwright never downloads a browser here: it launches the system's chromium through
``executable_path``. Where there is no chromium the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx
import pytest
from playwright.async_api import async_playwright
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping
    from contextlib import AbstractAsyncContextManager

    from playwright.async_api import Browser

BIN = Path(sys.executable).parent
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0


def find_chromium() -> str | None:
    """Debian's chromium: on PATH, or where the package puts it."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "chromium not found (no `chromium` on PATH, no /usr/bin/chromium): install Debian's "
            "chromium package (.ci/run does); Playwright must not download a browser"
        )
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@dataclass(frozen=True, slots=True)
class Producer:
    """A running ``ingest-producer`` process."""

    base_url: str
    log: Path


class ProducerFactory(Protocol):
    def __call__(
        self, extra_env: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Producer]: ...


@contextlib.contextmanager
def _process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        command = [str(BIN / "ingest-producer")]
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()


@pytest.fixture
def start_producer(redis_url: str, tmp_path: Path) -> ProducerFactory:
    """Start the real producer (``ingest-producer``, uvicorn) on a free port for the test."""

    @contextlib.asynccontextmanager
    async def start(extra_env: Mapping[str, str] | None = None) -> AsyncIterator[Producer]:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
        env = base | {
            "REDIS_URL": redis_url,
            "INGEST_HTTP_PORT": str(port),
            "INGEST_LOG_FORMAT": "json",
            # The tests plant entries in the one stream (the dashboard reads any layout alike).
            "INGEST_STREAM_SHARDS": "1",
            **(extra_env or {}),
        }
        log = tmp_path / f"producer-{port}.log"
        producer = Producer(f"http://127.0.0.1:{port}", log)
        with _process(env, log) as process:
            deadline = time.monotonic() + START_TIMEOUT_S
            async with httpx.AsyncClient(base_url=producer.base_url, timeout=2) as http:
                while True:
                    assert process.poll() is None, log.read_text(errors="replace")
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/ready")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        pytest.fail(f"the producer was not ready within {START_TIMEOUT_S:.0f}s")
                    await asyncio.sleep(0.1)
            yield producer

    return start
