"""``GET /health`` (the process is alive) and ``GET /ready`` (it can do its work).

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import RedisError

from ingest_producer.backlog import BacklogMonitor
from ingest_producer.models import Health
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.keys import Keys
from ingest_shared.redis_client import RedisClient, call, tls_failure
from ingest_shared.timeseries import check_timeseries

OK = Health("ok")


def health_routes(
    redis: RedisClient, keys: Keys, backlog: BacklogMonitor
) -> list[HTTPRouteHandler]:
    """Liveness and readiness probes."""

    @get("/health", tags=["health"], summary="Alive: always 200 while the process serves")
    async def health() -> Health:
        return OK

    @get(
        "/ready",
        tags=["health"],
        summary="Ready: Redis answers PING and has TimeSeries",
        responses={
            200: ResponseSpec(Health, description="Ready", generate_examples=False),
            503: ResponseSpec(
                Health, description="Not ready; `reason` says why", generate_examples=False
            ),
        },
    )
    async def ready() -> Response[Health]:
        try:
            await call(redis, "PING")
            await check_timeseries(redis, keys)
        except ConfigurationError as exc:
            reason = str(exc)
        except (RedisError, OSError) as exc:
            refused = tls_failure(exc)
            reason = (
                f"redis unavailable: {type(exc).__name__}: {exc}"
                if refused is None
                else f"TLS to Redis failed: {refused}"
            )
        else:
            # Overload stays "ready": writes get 503 + Retry-After, which a client can act on,
            # while an unready producer would be dropped from its load balancer altogether.
            return Response(Health("ok", backlog=backlog.backlog, overloaded=backlog.overloaded))
        return Response(Health("unavailable", reason), status_code=503)

    return [health, ready]
