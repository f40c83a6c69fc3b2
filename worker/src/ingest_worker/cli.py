"""``ingest-worker``: settings, logging, the Redis client and signal handling around one Worker.

Exit status: 0 after SIGTERM/SIGINT, 2 for a configuration problem (a bad variable, a Redis
without TimeSeries, a wrong type at the stream key, refused credentials, a metrics port that
cannot be bound), 1 when the shutdown grace period ran out or a bug crashed the loop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Protocol

import structlog

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.logconfig import configure_logging
from ingest_shared.mode import resolved
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import create_redis
from ingest_shared.settings import load_settings
from ingest_worker.daemon import Worker
from ingest_worker.monitor import DEFAULT_MAX_SILENCE_S, Heartbeat, start_monitor
from ingest_worker.ownership import ShardOwnership, takeover_idle_ms
from ingest_worker.reader import reply_budget

if TYPE_CHECKING:
    from ingest_shared.keys import Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIGURATION = 2
# The socket timeout must outlast XREADGROUP's BLOCK, or idle reads time out.
SOCKET_TIMEOUT_MARGIN_S = 5.0

log = structlog.get_logger("ingest_worker")


def main() -> None:
    """Console script: parse the environment once, run until SIGTERM/SIGINT, exit."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"ingest-worker: {exc}", file=sys.stderr)  # logging is not set up yet
        sys.exit(EXIT_CONFIGURATION)
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(asyncio.run(serve(settings)))


async def serve(settings: Settings) -> int:
    """Run one worker with its own Redis client until it stops; the process exit status."""
    structlog.contextvars.bind_contextvars(consumer=settings.consumer_name)
    socket_timeout = settings.block_ms / 1000 + SOCKET_TIMEOUT_MARGIN_S
    # A healthy loop beats at least once per blocking read (or socket timeout).
    heartbeat = Heartbeat(max(DEFAULT_MAX_SILENCE_S, 2 * socket_timeout))
    monitor = None
    if settings.worker_http_port:
        try:
            monitor = await start_monitor(
                settings.worker_http_host, settings.worker_http_port, heartbeat
            )
        except OSError as exc:
            log.error(
                "worker_misconfigured",
                error=f"cannot listen on {settings.worker_http_host}:{settings.worker_http_port} "
                f"for /metrics and /health ({exc.strerror}); set INGEST_WORKER_HTTP_PORT to a "
                "free port, or 0 to disable it",
            )
            return EXIT_CONFIGURATION
        log.info(
            "worker_monitor_listening",
            host=settings.worker_http_host,
            port=settings.worker_http_port,
        )
    settings = await resolved(settings)
    redis = create_redis(
        settings.redis_url,
        socket_timeout=socket_timeout,
        tls=settings.redis_tls,
        cluster=settings.redis_mode == "cluster",
        max_reply_bytes=reply_budget(settings),
    )
    try:
        return await run_until_stopped(
            runner_for(redis, settings, heartbeat), settings.shutdown_grace_s
        )
    finally:
        await redis.aclose()
        if monitor is not None:
            monitor.close()
            await monitor.wait_closed()


class Runner(Protocol):
    """What :func:`run_until_stopped` drives: a Worker, or the shard ownership of several."""

    stop_requested: asyncio.Event

    def stop(self) -> None: ...

    async def run(self) -> None: ...


def runner_for(redis: RedisClient, settings: Settings, heartbeat: Heartbeat) -> Runner:
    """The workers of the shards this process wins (one stream: a standby unless it wins it).

    Even with one shard only its owner writes: two workers on one stream would interleave
    their batches in every series they share."""

    def shard_worker(shard: Shard) -> Worker:
        processor = create_processor(redis, settings, shard)
        takeover = takeover_idle_ms(settings)
        return Worker(redis, processor, settings, heartbeat, shard, takeover_idle_ms=takeover)

    return ShardOwnership(redis, settings, shard_worker, on_tick=heartbeat.beat)


async def run_until_stopped(worker: Runner, grace_s: float) -> int:
    """Run ``worker`` with SIGTERM/SIGINT calling its ``stop()``; cancel it ``grace_s`` later."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, worker.stop)
    try:
        running = asyncio.create_task(worker.run(), name="ingest-worker")
        stop_requested = asyncio.create_task(worker.stop_requested.wait())
        try:
            await asyncio.wait({running, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                await asyncio.wait({running}, timeout=grace_s)
        finally:
            stop_requested.cancel()
        if not running.done():
            # The backstop: a step stuck past the grace period (its batch stays pending).
            log.error("shutdown_grace_expired", grace_s=grace_s)
            running.cancel()
            await asyncio.wait({running})
            return EXIT_FAILED
        return _exit_status(running)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _exit_status(finished: asyncio.Task[None]) -> int:
    error = finished.exception()
    if error is None:
        return EXIT_OK
    if isinstance(error, ConfigurationError):
        log.error("worker_misconfigured", error=str(error))
        return EXIT_CONFIGURATION
    log.error("worker_crashed", exc_info=error)
    return EXIT_FAILED
