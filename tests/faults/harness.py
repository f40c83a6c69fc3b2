"""What every fault test needs: the real services as processes, a steady load that records
what was accepted, and a checker that finds each accepted event in its series.

Events carry a unique (source, occurredAt) and their sequence number as the value, so the
checker can tell stored, lost and wrong values apart from the per-device series alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tests.ports import free_port

from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from redis.asyncio import Redis

BIN = Path(sys.executable).parent
KEYS = Settings().keys
METRIC = "load"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Event:
    """One reading the load sent: its device series and timestamp identify it."""

    n: int
    source: str
    timestamp_ms: int

    @property
    def body(self) -> dict[str, object]:
        occurred = format_ms(self.timestamp_ms)
        return {"source": self.source, "metric": METRIC, "value": self.n, "occurredAt": occurred}


@dataclass
class Outcome:
    """A request of the load: its events, when it was sent, and the status it got (0: none)."""

    events: list[Event]
    sent_at: float
    status: int = 0


@dataclass
class Load:
    """Posts batches to the producer from ``concurrency`` tasks until stopped."""

    base_url: str
    batch: int = 10
    interval_s: float = 0.02
    concurrency: int = 4
    sources: int = 8
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Ten minutes ago, one ms per event: unique per device, inside retention and skew.
        self._base_ms = now_ms() - 600_000
        self._counter = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _next_events(self) -> list[Event]:
        events = []
        for _ in range(self.batch):
            n = next(self._counter)
            events.append(Event(n, f"dev-{n % self.sources}", self._base_ms + n))
        return events

    async def _post_loop(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            outcome = Outcome(self._next_events(), time.monotonic())
            self.outcomes.append(outcome)
            try:
                response = await http.post(
                    "/api/ingest/events", json=[e.body for e in outcome.events]
                )
                outcome.status = response.status_code
            except httpx.TransportError:
                outcome.status = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
            self._tasks = [
                asyncio.create_task(self._post_loop(http)) for _ in range(self.concurrency)
            ]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*self._tasks)

    def accepted(self, sent_after: float = 0.0) -> list[Event]:
        """Events of requests sent at or after ``sent_after`` that got a 2xx."""
        return [
            event
            for outcome in self.outcomes
            if 200 <= outcome.status < 300 and outcome.sent_at >= sent_after
            for event in outcome.events
        ]

    def statuses(self) -> dict[int, int]:
        """How many requests got each status (0: no answer)."""
        counts: dict[int, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts


async def stored_values(redis: Redis, sources: int) -> dict[tuple[str, int], float]:
    """Every sample of the load's per-device series: (source, timestamp) -> value."""
    found: dict[tuple[str, int], float] = {}
    for index in range(sources):
        source = f"dev-{index}"
        key = KEYS.source_raw(METRIC, source)
        if not await redis.exists(key):
            continue
        for timestamp, value in await call(redis, "TS.RANGE", key, "-", "+"):
            found[(source, int(timestamp))] = float(value)
    return found


@dataclass(frozen=True)
class Report:
    """The loss checker's verdict on a set of accepted events."""

    accepted: int
    stored: int
    lost: list[Event]
    wrong: list[Event]
    pending: int

    def line(self) -> str:
        return (
            f"accepted {self.accepted}, stored {self.stored}, lost {len(self.lost)}, "
            f"wrong value {len(self.wrong)}, pending {self.pending}"
        )


async def check(redis: Redis, events: list[Event], sources: int) -> Report:
    """Find each of ``events`` in its device series with its value."""
    values = await stored_values(redis, sources)
    lost, wrong = [], []
    for event in events:
        value = values.get((event.source, event.timestamp_ms))
        if value is None:
            lost.append(event)
        elif value != event.n:
            wrong.append(event)
    return Report(len(events), len(events) - len(lost), lost, wrong, await pending(redis))


async def pending(redis: Redis) -> int:
    """Entries the group has delivered but not acknowledged (0 without a group)."""
    with contextlib.suppress(Exception):
        return int((await redis.xpending(KEYS.stream, Settings().consumer_group))["pending"])
    return 0


async def eventually(
    check: Callable[[], Awaitable[bool]], within_s: float, what: str, poll_s: float = 0.05
) -> float:
    """Wait until ``check()``; the seconds it took. Fails the test after ``within_s``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started


@dataclass
class Services:
    """``ingest-producer`` and ``ingest-worker`` as processes on ``redis_url``."""

    redis_url: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    worker_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
        return base | {
            "REDIS_URL": self.redis_url,
            "INGEST_HTTP_PORT": str(self.port),
            "INGEST_WORKER_HTTP_PORT": str(self.worker_port),
            "INGEST_LOG_FORMAT": "json",
            "INGEST_CONSUMER_NAME": "fault-worker",
            "INGEST_BLOCK_MS": "500",
            "INGEST_SHUTDOWN_GRACE_S": "5",
            **self.env,
        }

    def start(self, name: str) -> None:
        """Start ``ingest-producer`` or ``ingest-worker``."""
        log = (self.log_dir / f"{name}.log").open("ab")
        with log:
            self.processes[name] = subprocess.Popen(
                [str(BIN / name)], env=self._env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as http:

            async def answers() -> bool:
                self.alive()
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/ready")).status_code == 200
                return False

            await eventually(answers, START_TIMEOUT_S, "the producer to be ready")

    def stop(self, name: str) -> int:
        """SIGTERM, then the exit status (SIGKILL after STOP_TIMEOUT_S)."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    @contextlib.contextmanager
    def running(self, *names: str) -> Iterator[Services]:
        try:
            for name in names:
                self.start(name)
            yield self
        finally:
            self.stop_all()
