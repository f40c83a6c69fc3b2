"""What every read needs: the clients, the key layout and the limits, built once per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest_shared.schema import TimeWindow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ingest_shared.keys import Keys
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings


@dataclass(frozen=True, slots=True)
class ReadContext:
    """``redis`` takes keyed commands; FILTER queries go to every client in ``nodes``."""

    redis: RedisClient
    nodes: tuple[RedisClient, ...]
    keys: Keys
    group: str
    max_points: int
    stale_after_ms: int
    window: TimeWindow


def create_read_context(
    settings: Settings, redis: RedisClient, nodes: Sequence[RedisClient] | None = None
) -> ReadContext:
    """The read context of ``settings``; ``nodes`` defaults to ``[redis]`` (one server)."""
    return ReadContext(
        redis=redis,
        nodes=tuple(nodes) if nodes is not None else (redis,),
        keys=settings.keys,
        group=settings.consumer_group,
        max_points=settings.max_points,
        stale_after_ms=settings.stale_after_ms,
        window=TimeWindow(settings.max_clock_skew_ms, settings.retention_ms),
    )
