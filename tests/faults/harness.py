"""What every fault test needs: the real services as processes, a steady load that records
what each request got back, a `/health` probe, and the size of the run.

The loss checker that judges the result is ``tests.faults.checker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tests.faults.checker import Event, Outcome
from tests.ports import free_port

from ingest_shared.schema import now_ms
from ingest_shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
    from types import TracebackType

    from redis.asyncio import Redis
from redis.exceptions import ResponseError

BIN = Path(sys.executable).parent
METRIC = "load"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
# Events are stamped this long ago, ``step_ms`` apart: inside retention (1 day) for 100k+
# events, and never in the future.
EVENTS_START_AGO_MS = 6 * 3_600_000
# `make chaos` sets it (100k+ events per fault); `make test` runs at 1 (a few thousand).
SCALE_VARIABLE = "INGEST_CHAOS_SCALE"
HEALTH_PROBE = Path(__file__).with_name("health_probe.py")


def chaos_scale() -> float:
    """How many times the CI size the chaos tests run at (``INGEST_CHAOS_SCALE``, default 1)."""
    raw = os.environ.get(SCALE_VARIABLE, "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise ValueError(f"{SCALE_VARIABLE} must be a positive number, got {raw!r}")
    return scale


@dataclass(frozen=True)
class Size:
    """How many events a fault test sends, and how fast."""

    events: int
    rate: float  # events per second, all clients together

    @classmethod
    def scaled(cls, ci_events: int, ci_rate: float, full_rate: float) -> Size:
        """``ci_events`` at scale 1; more events, and a rate up to ``full_rate``, above it."""
        scale = chaos_scale()
        return cls(round(ci_events * scale), min(full_rate, ci_rate * max(1.0, scale)))


@dataclass
class Load:
    """Posts batches from ``concurrency`` clients at ``rate`` events/s in all until stopped.

    Each client has its own connection (the pool holds one per client, so no request waits
    for the pool) and never catches up on posts it missed while a request hung.
    """

    base_url: str
    batch: int = 10
    concurrency: int = 4
    rate: float = 2000.0
    sources: int = 8
    step_ms: int = 10
    metric: str = METRIC
    timeout_s: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    # Gateway-like batches: every event of a batch has the batch's one occurredAt (a gateway
    # stamps what it forwards at receipt), ``step_ms`` apart from batch to batch.
    one_time_per_batch: bool = False
    # The devices, in turn (default: ``dev-0`` ... ``dev-<sources - 1>``).
    source_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._base_ms = now_ms() - EVENTS_START_AGO_MS
        self._counter = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0

    def _next_events(self) -> list[Event]:
        events = []
        batch_ms = self._base_ms + self.sent // self.batch * self.step_ms
        for _ in range(self.batch):
            n = next(self._counter)
            names = self.source_names
            source = names[n % len(names)] if names else f"dev-{n % self.sources}"
            at_ms = batch_ms if self.one_time_per_batch else self._base_ms + n * self.step_ms
            events.append(Event(n, self.metric, source, at_ms))
        self.sent += self.batch
        return events

    async def _client(self, http: httpx.AsyncClient, index: int) -> None:
        loop = asyncio.get_running_loop()
        period = self.concurrency * self.batch / self.rate
        due = loop.time() + period * index / self.concurrency  # spread the clients out
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, due - loop.time()))
            if self._stop.is_set():
                return
            outcome = Outcome(self._next_events(), time.monotonic())
            self.outcomes.append(outcome)
            try:
                response = await http.post(
                    "/api/ingest/events", json=[e.body for e in outcome.events]
                )
            except httpx.TransportError as exc:
                outcome.detail = f"{type(exc).__name__}: {exc}"
            else:
                outcome.status = response.status_code
                if not response.is_success:
                    outcome.detail = _detail(response)
            due = max(due + period, loop.time())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, limits=limits
        ) as http:
            self._tasks = [
                asyncio.create_task(self._client(http, index)) for index in range(self.concurrency)
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
            if outcome.status // 100 == 2 and outcome.sent_at >= sent_after
            for event in outcome.events
        ]

    def statuses(self) -> dict[int, int]:
        """How many requests got each status (0: no answer)."""
        counts: dict[int, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        return response.text[:200]
    return str(detail)


class HealthProbe:
    """GET ``/health`` every ``interval_s`` from a process of its own (``health_probe.py``:
    neither the load's event loop nor its GIL delays it) and keep every latency and failure."""

    def __init__(self, port: int, interval_s: float = 0.1) -> None:
        self._command = [sys.executable, str(HEALTH_PROBE), str(port), str(interval_s)]
        self._process: subprocess.Popen[bytes] | None = None
        self.latencies_s: list[float] = []
        self.started_at: list[float] = []  # time.monotonic() of each answered probe
        self.failures: list[str] = []

    @property
    def worst_s(self) -> float:
        return max(self.latencies_s, default=0.0)

    def slowest(self, count: int = 5) -> list[tuple[float, float]]:
        """The ``count`` slowest probes: (monotonic start, seconds), slowest first."""
        pairs = sorted(zip(self.latencies_s, self.started_at, strict=True), reverse=True)
        return [(at, latency) for latency, at in pairs[:count]]

    def __enter__(self) -> HealthProbe:
        self._process = subprocess.Popen(
            self._command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        output, _ = self._process.communicate(timeout=STOP_TIMEOUT_S)
        result = json.loads(output)
        self.started_at = [at for at, _ in result["samples"]]
        self.latencies_s = [latency for _, latency in result["samples"]]
        self.failures = result["failures"]


async def pending(redis: Redis) -> int:
    """Entries the group has delivered but not acknowledged, over every shard of the default
    layout (0 for a shard without a group)."""
    settings = Settings()
    total = 0
    for shard in settings.keys.shards:
        with contextlib.suppress(ResponseError):  # NOGROUP: nothing delivered there
            total += int((await redis.xpending(shard.stream, settings.consumer_group))["pending"])
    return total


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
    """``ingest-producer`` and ``ingest-worker`` processes on ``redis_url``.

    Each process has a name (its log is ``<log_dir>/<name>.log``); ``start`` runs the console
    script of that name unless given a command, with ``env`` over the common environment.
    """

    redis_url: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    worker_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        """The settings the services parse (key names, rollups, group) for the checker."""
        return load_settings(self._env())

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
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
            **(extra or {}),
        }

    def start(
        self,
        name: str,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``ingest-producer``, ``ingest-worker`` or ``command`` as process ``name``."""
        log = (self.log_dir / f"{name}.log").open("ab")
        with log:
            process = subprocess.Popen(
                list(command) if command else [str(BIN / name)],
                env=self._env(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.processes[name] = process
        return process

    def start_worker(
        self,
        name: str,
        consumer: str,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """One more worker, as consumer ``consumer``, without a /metrics port of its own."""
        own = {"INGEST_CONSUMER_NAME": consumer, "INGEST_WORKER_HTTP_PORT": "0", **(env or {})}
        return self.start(name, command=command or [str(BIN / "ingest-worker")], env=own)

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

    def kill(self, name: str) -> int:
        """SIGKILL process ``name``; its exit status."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        return process.wait()

    async def exited(self, name: str, within_s: float) -> int:
        """Wait for process ``name`` to exit by itself; its exit status."""
        process = self.processes[name]

        async def done() -> bool:
            return process.poll() is not None

        await eventually(done, within_s, f"{name} to exit")
        del self.processes[name]
        return process.wait()

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

    @contextlib.asynccontextmanager
    async def serving(self, *names: str) -> AsyncIterator[Services]:
        """:meth:`running` for tests that serve the processes from their event loop (a proxy):
        the processes are stopped from a thread, so the loop keeps serving them meanwhile."""
        try:
            for name in names:
                self.start(name)
            yield self
        finally:
            await asyncio.to_thread(self.stop_all)

    @contextlib.contextmanager
    def running(self, *names: str) -> Iterator[Services]:
        try:
            for name in names:
                self.start(name)
            yield self
        finally:
            self.stop_all()
