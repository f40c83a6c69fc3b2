"""The tutorial's ingest app, re-implemented for the benchmark baseline. Not product code.

It does what the tutorial describes and nothing more: FastAPI + Pydantic v2, one app, four
routes, one XADD per POST, and a process route that XREADGROUPs ``count`` entries,
validates each, awaits ``TS.ADD ... ON_DUPLICATE LAST`` one at a time (creating the raw and
rollup series, the rule and the set member the first time a metric is seen), dead-letters
invalid entries and XACKs everything at the end. Run it with uvicorn::

    uvicorn bench.baseline.app:app --no-access-log --log-level warning
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@dataclass(frozen=True)
class Settings:
    """The tutorial's environment variables and defaults."""

    redis_url: str
    stream_key: str
    dead_letter_key: str
    consumer_group: str
    metrics_key: str
    rollup_bucket_ms: int

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            redis_url=env.get("REDIS_URL", "redis://localhost:6379"),
            stream_key=env.get("INGEST_STREAM_KEY", "telemetry:events"),
            dead_letter_key=env.get("INGEST_DEAD_LETTER_KEY", "telemetry:events:dead-letter"),
            consumer_group=env.get("INGEST_CONSUMER_GROUP", "telemetry-workers"),
            metrics_key=env.get("INGEST_METRICS_KEY", "telemetry:metrics"),
            rollup_bucket_ms=int(env.get("INGEST_ROLLUP_BUCKET_MS", "60000")),
        )

    def raw_key(self, metric: str) -> str:
        return f"telemetry:series:raw:{metric}"

    def rollup_key(self, metric: str) -> str:
        return f"telemetry:series:rollup:1m:{metric}"


RETENTION_MS = 86_400_000


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class TelemetryEvent(BaseModel):
    source: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: float
    occurredAt: datetime = Field(default_factory=_now)


class ProcessRequest(BaseModel):
    consumer: str = "worker-1"
    count: int = Field(default=10, ge=1, le=1000)


class Store:
    """Every Redis call the app makes."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.known_metrics: set[str] = set()

    async def command(self, *args: str | int | float) -> Any:
        """A raw command (the TimeSeries ones); replies are str (decode_responses=True)."""
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.settings.stream_key, self.settings.consumer_group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, event: TelemetryEvent) -> str:
        fields: dict[Any, Any] = {
            "source": event.source,
            "metric": event.metric,
            "value": str(event.value),
            "occurredAt": _rfc3339(event.occurredAt),
        }
        entry_id: Any = await self.redis.xadd(self.settings.stream_key, fields)
        return str(entry_id)

    async def ensure_metric(self, metric: str) -> None:
        """Create the raw series, its rollup and the rule the first time a metric shows up."""
        if metric in self.known_metrics:
            return
        raw, rollup = self.settings.raw_key(metric), self.settings.rollup_key(metric)
        for key, kind in ((raw, "raw"), (rollup, "rollup")):
            try:
                await self.command(
                    "TS.CREATE", key, "RETENTION", RETENTION_MS,
                    "LABELS", "metric", metric, "kind", kind,
                )  # fmt: skip
            except ResponseError as exc:
                if "already exists" not in str(exc):
                    raise
        try:
            await self.command(
                "TS.CREATERULE", raw, rollup, "AGGREGATION", "avg", self.settings.rollup_bucket_ms
            )
        except ResponseError as exc:
            if "already has" not in str(exc):
                raise
        await self.redis.sadd(self.settings.metrics_key, metric)
        self.known_metrics.add(metric)

    async def record(self, event: TelemetryEvent) -> None:
        await self.ensure_metric(event.metric)
        timestamp_ms = int(event.occurredAt.timestamp() * 1000)
        await self.command(
            "TS.ADD",
            self.settings.raw_key(event.metric),
            timestamp_ms,
            event.value,
            "ON_DUPLICATE",
            "LAST",
        )

    async def dead_letter(self, entry_id: str, fields: dict[str, str]) -> None:
        await self.redis.xadd(
            self.settings.dead_letter_key,
            {
                "messageId": entry_id,
                "reason": "invalid telemetry payload",
                "payload": json.dumps(fields),
            },
        )

    async def process(self, consumer: str, count: int) -> dict[str, int]:
        s = self.settings
        reply: Any = await self.redis.xreadgroup(
            s.consumer_group, consumer, {s.stream_key: ">"}, count=count
        )
        read = processed = dead_lettered = 0
        ids: list[str] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                read += 1
                ids.append(entry_id)
                try:
                    event = TelemetryEvent.model_validate(fields)
                except ValidationError:
                    await self.dead_letter(entry_id, fields)
                    dead_lettered += 1
                    continue
                await self.record(event)
                processed += 1
        acked = int(await self.redis.xack(s.stream_key, s.consumer_group, *ids)) if ids else 0
        return {
            "read": read,
            "processed": processed,
            "dead_lettered": dead_lettered,
            "acked": acked,
        }

    async def summary(self) -> dict[str, Any]:
        s = self.settings
        total = await self.redis.xlen(s.stream_key)
        dead = await self.redis.xlen(s.dead_letter_key)
        pending = await self.redis.xpending_range(
            s.stream_key, s.consumer_group, min="-", max="+", count=1000
        )
        metrics: list[dict[str, Any]] = []
        members: Any = await self.redis.smembers(s.metrics_key)
        for metric in sorted(members):
            raw = await self._latest(s.raw_key(metric))
            rollup = await self._latest(s.rollup_key(metric))
            metrics.append({"metric": metric, "raw": raw, "rollup": rollup})
        return {
            "queue": {"total": total, "pending": len(pending), "dead_lettered": dead},
            "metrics": metrics,
        }

    async def _latest(self, key: str) -> dict[str, Any] | None:
        try:
            sample = await self.command("TS.GET", key)
        except ResponseError:
            return None
        if not sample:
            return None
        return {"timestampMs": int(sample[0]), "value": float(sample[1])}

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        entries: Any = await self.redis.xrevrange(self.settings.stream_key, count=limit)
        return [{"id": entry_id, **fields} for entry_id, fields in entries]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings.from_env()
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    store = Store(redis, settings)
    await store.ensure_group()
    app.state.store = store
    try:
        yield
    finally:
        await redis.aclose()


app = FastAPI(title="Telemetry ingest (tutorial baseline)", lifespan=lifespan)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@app.post("/api/ingest/events")
async def enqueue_event(event: TelemetryEvent, request: Request) -> dict[str, Any]:
    entry_id = await _store(request).enqueue(event)
    return {"id": entry_id, "value": event.model_dump(mode="json")}


@app.post("/api/ingest/workers/process")
async def process_events(body: ProcessRequest, request: Request) -> dict[str, int]:
    return await _store(request).process(body.consumer, body.count)


@app.get("/api/ingest/summary")
async def summary(request: Request) -> dict[str, Any]:
    return await _store(request).summary()


@app.get("/api/ingest/events/recent")
async def recent_events(request: Request, limit: int = 20) -> list[dict[str, Any]]:
    return await _store(request).recent(limit)
