"""The Litestar application factory. The caller owns the Redis client and closes it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from importlib.metadata import version
from typing import TYPE_CHECKING

import structlog
from litestar import Litestar
from redis.exceptions import NoPermissionError

from ingest_producer.agent_routes import agent_routes
from ingest_producer.apidocs import api_docs_config
from ingest_producer.appender import EventAppender
from ingest_producer.auth import KeyRing, key_guard
from ingest_producer.backlog import BacklogMonitor
from ingest_producer.cardinality import SeriesRegistry
from ingest_producer.dashboard import dashboard_routes
from ingest_producer.errors import exception_handlers
from ingest_producer.health import health_routes
from ingest_producer.ingest import enqueue_route, process_route
from ingest_producer.observe import RequestObserver, metrics_route
from ingest_producer.read_routes import read_side_routes
from ingest_producer.reading.isolation import ReadGuard
from ingest_producer.replica import ReplicaMonitor
from ingest_producer.summary import EntryChecks, query_routes
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.processor import create_processor
from ingest_shared.schema import TimeWindow
from ingest_shared.streams import check_layout, ensure_group, is_transient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings

logger = structlog.get_logger(__name__)


def create_app(
    settings: Settings,
    redis: RedisClient,
    *,
    read_redis: RedisClient | None = None,
    lifespan: Sequence[Callable[[Litestar], AbstractAsyncContextManager[None]]] = (),
    multiprocess_dir: str | None = None,
) -> Litestar:
    """The producer API on ``redis``; ``lifespan`` context managers wrap the app's lifetime.
    ``read_redis``: a replica of it for the read side's queries (default: ``redis``).

    At startup the shard layout is checked against the one recorded in Redis (another one stops
    the app), the append function is loaded and each shard's consumer group created if
    missing; an unreachable Redis there is logged and does not stop the app (loading and groups
    happen again on demand), any other Redis error does. ``multiprocess_dir`` is
    prometheus-client's directory when several processes serve the app (``/metrics`` then sums
    over them).
    """
    keys = settings.keys
    group = settings.consumer_group
    window = TimeWindow(settings.max_clock_skew_ms, settings.retention_ms)
    processors = [create_processor(redis, settings, shard) for shard in keys.shards]
    appender = EventAppender(redis, settings)
    registry = SeriesRegistry(redis, settings)
    ring = KeyRing(settings.write_keys, settings.read_keys)
    # One per process: every read route shares its slots, its flights and its cache.
    reads = ReadGuard.of(settings, redis)
    backlog = BacklogMonitor.over(
        redis, keys.shards, group, settings.max_backlog, gauges=settings.metrics_enabled
    )
    replica = None if read_redis is None else ReplicaMonitor(redis, read_redis)
    reader = redis if read_redis is None else read_redis

    async def prepare_redis() -> None:
        try:
            # First: with another shard layout in Redis, appending would strand events.
            await check_layout(redis, keys)
            await appender.load()
            await registry.seed()
            await asyncio.gather(*(ensure_group(redis, s.stream, group) for s in keys.shards))
        except ConfigurationError as exc:
            logger.error("producer_misconfigured", error=str(exc))
            raise
        except NoPermissionError as exc:
            # A read-only (dashboard) user: reads work; writes answer 503 naming the command.
            logger.warning(
                "setup_refused_by_acl", error=str(exc), steps="HSETNX layout, FUNCTION LOAD, XGROUP"
            )
        except Exception as exc:
            if not is_transient(exc):
                # E.g. the stream key holds another type.
                logger.error("producer_setup_failed", error=str(exc))
                raise
            # Both steps are repeated on demand once Redis is back.
            logger.warning("redis_unavailable_at_startup", error=str(exc))
        if outside := keys.outside_prefix():
            logger.warning(
                "keys_outside_prefix",
                keys=outside,
                prefix=keys.prefix,
                hint="an ACL key pattern on INGEST_KEY_PREFIX will not cover them",
            )
        if ring.open:
            logger.warning(
                "auth_disabled",
                hint="set INGEST_API_KEYS (and INGEST_READ_KEYS) to require API keys",
            )
        logger.info(
            "producer_started",
            stream=keys.shards[0].stream,
            shards=len(keys.shards),
            cluster=keys.cluster,
            group=group,
        )
        # Everything built so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise took 30-180 ms under load (a /health answer waits that).
        gc.freeze()

    @contextlib.asynccontextmanager
    async def start(_: Litestar) -> AsyncIterator[None]:
        # Set up before the backlog monitor first looks: it would take the groups not created
        # yet for groups Redis lost, and log an error for each.
        await prepare_redis()
        async with contextlib.AsyncExitStack() as running:
            await running.enter_async_context(backlog.running())
            if replica is not None:
                await running.enter_async_context(replica.running())
            yield

    app = Litestar(
        route_handlers=[
            enqueue_route(settings, window, appender, backlog, registry),
            *agent_routes(settings, window, appender, backlog, redis, registry=registry),
            process_route(redis, keys, group, processors, type_required=not settings.write_keys),
            *query_routes(
                redis,
                keys,
                group,
                EntryChecks.of(settings),
                reads,
                caps=registry.caps,
                reader=reader,
            ),
            *read_side_routes(settings, redis, ring, reads, reader=reader),
            *health_routes(redis, keys, backlog),
            *([metrics_route(multiprocess_dir)] if settings.metrics_enabled else []),
            *dashboard_routes(),
        ],
        # No guard at all when no key is configured: routes then read client_id as anonymous.
        guards=[] if ring.open else [key_guard(ring)],
        lifespan=[*lifespan, start],
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_body_bytes,
        # structlog is configured by the entry point; Litestar must not install its own.
        logging_config=None,
        openapi_config=api_docs_config(
            title="telemetry-ingest producer",
            version=version("ingest-producer"),
            description=(
                "Accepts telemetry events into a Redis Stream and reports on the pipeline. "
                "Every error response has the body `ErrorBody`."
            ),
        ),
    )
    # Outermost, so 404/405 and handled errors are observed with the status the client gets.
    app.asgi_handler = RequestObserver(app.asgi_handler, count=settings.metrics_enabled)
    return app
