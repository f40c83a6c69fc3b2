"""``GET /api/ingest/summary`` and ``GET /api/ingest/events/recent``: read-only queries.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from redis.exceptions import ResponseError

from ingest_producer.auth import ACCESS_OPT, Access
from ingest_producer.cardinality import Caps, cardinality
from ingest_producer.errors import error_responses
from ingest_producer.models import (
    ConsumerInfo,
    MetricSummary,
    Point,
    QueueSummary,
    RecentEntry,
    Summary,
)
from ingest_producer.openapi import ParameterOperation
from ingest_producer.reading import partials
from ingest_producer.reading.isolation import ReadGuard, json_answer, shared_responses
from ingest_producer.reading.replies import Sample
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.functions import PRODUCER_LIBRARY, fcall
from ingest_shared.keys import FIELD_OVERSIZED, FIELD_PREFIX, FIELD_VALUE, Keys
from ingest_shared.messages import field_first
from ingest_shared.redis_client import RedisClient
from ingest_shared.schema import TimeWindow, now_ms, sample_from_entry
from ingest_shared.settings import Settings
from ingest_shared.streams import OVERSIZED_PREFIX_BYTES

# Replies that mean "nothing there yet" rather than a failure.
_NO_GROUP = "NOGROUP"
_NO_KEY = "no such key"
# The queue commands read_summary sends per shard.
_SHARD_REPLIES = 6
# The fields an oversized entry is shown with (as the worker's read functions return it).
_OVERSIZED, _PREFIX = FIELD_OVERSIZED.decode(), FIELD_PREFIX.decode()


class CheckedEntry(RecentEntry, omit_defaults=True):
    """One stream entry as the worker would take it: ``reason`` (absent when it would store
    the entry) says why it will be dead-lettered."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EntryChecks:
    """What the worker checks a stream entry with: the time window, and the largest entry it
    decodes (INGEST_MAX_ENTRY_BYTES; 0: any)."""

    window: TimeWindow
    max_entry_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> "EntryChecks":
        return cls(
            TimeWindow(settings.max_clock_skew_ms, settings.retention_ms),
            settings.max_entry_bytes,
        )


def query_routes(
    redis: RedisClient,
    keys: Keys,
    group: str,
    checks: EntryChecks,
    guard: ReadGuard,
    *,
    caps: Caps,
    reader: "RedisClient | None" = None,
) -> list[HTTPRouteHandler]:
    """The read routes, bound to their collaborators; ``checks``: ``EntryChecks.of(settings)``;
    the summary is shared through ``guard``, read from ``reader`` (a replica, default
    ``redis``); ``caps``: the cardinality caps it shows."""
    summary_redis = redis if reader is None else reader

    @get(
        "/api/ingest/summary",
        responses=shared_responses(Summary, 401, 403, 500, 503),
        opt={ACCESS_OPT: Access.READ},
        tags=["queries"],
        summary="Queue health and the latest raw and rollup values of every metric",
        description=(
            "`queue.lag`: entries not yet delivered to the group (null when Redis cannot tell); "
            "`queue.oldestPendingAgeMs`: age of the oldest unacknowledged entry (null when none); "
            "`queue.consumers`: each consumer's pending count and idle time. Per metric, "
            "`raw` is its newest sample; `rollup` is the first configured rollup's latest "
            "closed bucket and `rollups` has every configured rollup by name. Each shard "
            "keeps its own part of a metric's series: a bucket is the newest one any shard "
            "has closed, merged exactly across shards (avg is the sum of every shard's sums "
            "over the sum of their counts; shards still filling that bucket count too). "
            "`first`, `last` and `std.p` rollups cannot be merged across shards and are "
            "always null. Two Redis round trips in sequence whatever the number of metrics, "
            "shards or devices."
        ),
    )
    async def summary() -> Response[bytes]:
        return json_answer(
            await guard.shared(
                "summary", (), lambda: read_summary(summary_redis, keys, group, caps)
            )
        )

    @get(
        "/api/ingest/events/recent",
        responses=error_responses(401, 403, 422, 500, 503),
        opt={ACCESS_OPT: Access.READ},
        operation_class=ParameterOperation,
        tags=["queries"],
        summary="The newest stream entries, newest first",
        description=(
            "Each entry is checked with the worker's own rules. `value` holds its fields as "
            "text, and its `value` field as a number when the worker would store the entry; "
            "otherwise `reason` says why the worker will dead-letter it (starting with the "
            "field it is about). An entry larger than INGEST_MAX_ENTRY_BYTES is shown as the "
            f"worker reads it: `{_OVERSIZED}` (its size) and `{_PREFIX}` (its first "
            f"{OVERSIZED_PREFIX_BYTES} bytes), so one answer holds at most `count` entries of "
            "that size."
        ),
    )
    async def recent_events(
        count: Annotated[int, Parameter(ge=1, le=1000, description="How many entries")] = 20,
    ) -> list[CheckedEntry]:
        return await read_recent(redis, keys, count, checks)

    return [summary, recent_events]


async def read_summary(redis: RedisClient, keys: Keys, group: str, caps: Caps) -> Summary:
    """Two round trips in sequence whatever the number of metrics, shards and devices: the
    queue counters (of every shard, summed) at the same time as the metrics' latest values
    (``reading.partials``, which takes two). On a cluster each is one pipeline per node."""
    (members, series, names, *replies), latest = await asyncio.gather(
        _queue_replies(redis, keys, group), partials.read_latest((redis,), keys)
    )
    queue = _queue(keys, group, replies)
    for reply in (members, series, names):
        if isinstance(reply, Exception):
            raise reply
    metrics = sorted(m.decode(errors="replace") for m in members)
    rollups = keys.rollups
    summaries = []
    for metric in metrics:
        found = latest.get(metric, partials.NOTHING)
        by_name = {rollup.name: _point(found.rollups.get(rollup.name)) for rollup in rollups}
        summaries.append(
            MetricSummary(metric, _point(found.raw), by_name[rollups[0].name], by_name)
        )
    return Summary(queue, summaries, cardinality(caps, series, names))


async def _queue_replies(redis: RedisClient, keys: Keys, group: str) -> list[Any]:
    """The metrics set, the registry's counts of series and metric names, then
    :data:`_SHARD_REPLIES` queue replies per shard (errors as values), in one pipeline."""
    pipe = redis.pipeline(transaction=False)
    pipe.smembers(keys.metrics)
    pipe.scard(keys.registry_series)
    pipe.scard(keys.registry_metrics)
    for shard in keys.shards:
        pipe.xlen(shard.stream)
        pipe.xpending(shard.stream, group)
        pipe.xlen(shard.dead_letter)
        pipe.execute_command("XINFO", "STREAM", shard.stream)
        pipe.xinfo_groups(shard.stream)
        pipe.xinfo_consumers(shard.stream, group)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


def _queue(keys: Keys, group: str, replies: list[Any]) -> QueueSummary:
    """The queue counters of every shard, summed, from :func:`_queue_replies`."""
    shards = keys.shards
    per_shard = [replies[i * _SHARD_REPLIES : (i + 1) * _SHARD_REPLIES] for i in range(len(shards))]
    now = now_ms()
    lags = [_lag(groups, group) for _, _, _, _, groups, _ in per_shard]
    ages = [_oldest_pending_age(pending, now) for _, pending, *_ in per_shard]
    known_ages = [age for age in ages if age is not None]
    return QueueSummary(
        total=sum(_count(total) for total, *_ in per_shard),
        pending=sum(_pending_count(pending) for _, pending, *_ in per_shard),
        dead_lettered=sum(_count(dead) for _, _, dead, *_ in per_shard),
        added=sum(_entries_added(info) for _, _, _, info, *_ in per_shard),
        lag=None if None in lags else sum(lag for lag in lags if lag is not None),
        oldestPendingAgeMs=max(known_ages) if known_ages else None,
        consumers=_merged([c for *_, consumers in per_shard for c in _consumers(consumers)]),
    )


async def read_recent(
    redis: RedisClient, keys: Keys, count: int, checks: EntryChecks
) -> list[CheckedEntry]:
    """The newest ``count`` entries (of every shard, merged by id), whatever their writer put
    in them, each as :func:`checked_entry` shows it. Read through ``ingest_recent``, which
    bounds every entry in Redis: 20 entries of 4 MB never leave it whole."""
    bound = (checks.max_entry_bytes, OVERSIZED_PREFIX_BYTES)
    replies = await asyncio.gather(
        *(
            fcall(redis, PRODUCER_LIBRARY, "FCALL", "ingest_recent", 1, shard.stream, count, *bound)
            for shard in keys.shards
        )
    )
    entries = [(entry_id, _pairs(fields)) for reply in replies for entry_id, fields in reply]
    if len(replies) > 1:
        entries = sorted(entries, key=lambda entry: _id_order(entry[0]), reverse=True)[:count]
    now = now_ms()
    return [checked_entry(entry_id, fields, checks, now) for entry_id, fields in entries]


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's fields as the function returns them (name, value, ...), as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _id_order(entry_id: bytes) -> tuple[int, int]:
    """A stream id as (ms, seq), for sorting entries of several streams by time."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


def _merged(consumers: list[ConsumerInfo]) -> list[ConsumerInfo]:
    """One entry per consumer name (a worker reads several shards under one name): pending
    summed, idle the smallest (its latest activity anywhere); in order of first appearance."""
    by_name: dict[str, ConsumerInfo] = {}
    for consumer in consumers:
        seen = by_name.get(consumer.name)
        if seen is None:
            by_name[consumer.name] = consumer
        else:
            by_name[consumer.name] = ConsumerInfo(
                consumer.name,
                seen.pending + consumer.pending,
                min(seen.idleMs, consumer.idleMs),
            )
    return list(by_name.values())


def checked_entry(
    entry_id: bytes, fields: dict[bytes, bytes], checks: EntryChecks, now: int
) -> CheckedEntry:
    """An entry (as ``ingest_recent`` bounded it) checked as the worker checks it
    (``sample_from_entry``): fields as text (invalid UTF-8 replaced), ``value`` the number
    the worker would store, or ``reason`` why it will not."""
    texts: dict[str, str | float] = {
        name.decode(errors="replace"): text.decode(errors="replace")
        for name, text in fields.items()
    }
    public_id = entry_id.decode()
    if FIELD_OVERSIZED in fields:  # bounded by ingest_recent
        size = fields[FIELD_OVERSIZED].decode()
        reason = (
            f"entry of {size} bytes is larger than INGEST_MAX_ENTRY_BYTES "
            f"({checks.max_entry_bytes}): shown as its size and first {OVERSIZED_PREFIX_BYTES} "
            "bytes"
        )
        return CheckedEntry(public_id, texts, reason)
    try:
        sample = sample_from_entry(entry_id, fields, checks.window, now)
    except InvalidEventError as exc:
        return CheckedEntry(public_id, texts, field_first(exc.reason, exc.field))
    texts[FIELD_VALUE.decode()] = sample.value
    return CheckedEntry(public_id, texts)


def _count(reply: object) -> int:
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, int):
        msg = f"unexpected reply {reply!r}, expected an integer"
        raise TypeError(msg)
    return reply


def _entries_added(reply: object) -> int:
    """XINFO STREAM's entries-added; a missing stream has had none."""
    if isinstance(reply, ResponseError) and _NO_KEY in str(reply):
        return 0
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, dict):  # redis-py parses XINFO STREAM into a dict
        msg = f"unexpected XINFO STREAM reply {reply!r}"
        raise TypeError(msg)
    return int(reply.get("entries-added") or reply.get(b"entries-added") or 0)


def _missing_group(reply: object) -> bool:
    """True for the reply to a stream or group that does not exist (yet)."""
    text = str(reply)
    return isinstance(reply, ResponseError) and (text.startswith(_NO_GROUP) or _NO_KEY in text)


def _lag(reply: object, group: str) -> int | None:
    """XINFO GROUPS' ``lag`` of ``group``: None when Redis does not know it (or no group)."""
    if _missing_group(reply):
        return None
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, list):
        msg = f"unexpected XINFO GROUPS reply {reply!r}"
        raise TypeError(msg)
    for info in reply:
        if _text(info.get("name")) == group:
            lag = info.get("lag")
            return None if lag is None else int(lag)
    return None


def _oldest_pending_age(reply: object, now: int) -> int | None:
    """Age of the oldest pending entry by its id's time (XPENDING's smallest id)."""
    if _missing_group(reply) or not isinstance(reply, dict) or not reply.get("min"):
        return None
    millis = _text(reply["min"]).partition("-")[0]
    return max(0, now - int(millis)) if millis.isdigit() else None


def _consumers(reply: object) -> list[ConsumerInfo]:
    """XINFO CONSUMERS: name, pending entries, idle ms; none for a missing stream or group."""
    if _missing_group(reply):
        return []
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, list):
        msg = f"unexpected XINFO CONSUMERS reply {reply!r}"
        raise TypeError(msg)
    return [
        ConsumerInfo(_text(c.get("name")), int(c.get("pending") or 0), int(c.get("idle") or 0))
        for c in reply
    ]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pending_count(reply: object) -> int:
    """XPENDING's summary count; a missing stream or group has nothing pending."""
    if isinstance(reply, ResponseError) and str(reply).startswith(_NO_GROUP):
        return 0
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, dict):  # redis-py parses the summary form into a dict
        msg = f"unexpected XPENDING reply {reply!r}"
        raise TypeError(msg)
    return int(reply["pending"])


def _point(sample: Sample | None) -> Point | None:
    return None if sample is None else Point(*sample)
