"""Helpers for the read-side tests: an app on the test server, events in, processed."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Connection, Redis

from ingest_producer.app import create_app
from ingest_producer.asgi import build_app
from ingest_shared.schema import format_ms, now_ms

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from ingest_shared.settings import Settings

Client = AsyncTestClient[Litestar]
# Ten minutes ago, on a minute boundary: inside retention and clock skew.
BASE_MS = (now_ms() - 600_000) // 60_000 * 60_000


@contextlib.asynccontextmanager
async def app_client(settings: Settings, redis_url: str) -> AsyncIterator[Client]:
    """The producer app (its own Redis client) on the test server."""
    app = build_app(dataclasses.replace(settings, redis_url=redis_url))
    async with AsyncTestClient(app) as client:
        yield client


def event(metric: str, source: str, value: float, at: int) -> dict[str, Any]:
    return {"source": source, "metric": metric, "value": value, "occurredAt": format_ms(at)}


async def ingest(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    """POST ``events`` as one batch and process everything in the stream."""
    response = await client.post("/api/ingest/events", json=list(events))
    assert response.status_code == 200, response.text
    while True:
        response = await client.post(
            "/api/ingest/workers/process", json={"consumer": "w1", "count": 10_000}
        )
        assert response.status_code == 200, response.text
        if response.json()["read"] == 0:
            return


class RecordingConnection(Connection):
    """Records every command sent (pipelines included) and counts socket writes."""

    sent: list[bytes] = []  # noqa: RUF012  # shared on purpose: one test at a time
    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        parts = [command] if isinstance(command, bytes | str) else list(command)
        type(self).sent.append(
            b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in parts)
        )
        await super().send_packed_command(command, check_health)

    @classmethod
    def reset(cls) -> None:
        cls.sent = []
        cls.writes = 0


@contextlib.asynccontextmanager
async def recording_client(settings: Settings, redis_url: str) -> AsyncIterator[Client]:
    """The app on a Redis client whose commands :class:`RecordingConnection` records."""
    recording = Redis.from_url(redis_url, connection_class=RecordingConnection)

    @contextlib.asynccontextmanager
    async def close_recording(_: Litestar) -> AsyncIterator[None]:
        yield
        await recording.aclose()

    app = create_app(settings, recording, lifespan=[close_recording])
    async with AsyncTestClient(app) as client:
        yield client
