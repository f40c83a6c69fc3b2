"""What every agent protocol route does with a body: read it, check its samples, append them.

The decoders (``protocols``) turn a body into samples; here each sample goes through the event
rules (:func:`~ingest_shared.schema.valid_labels`, :func:`~ingest_shared.schema.accept_reading`)
and the valid ones through the same :class:`~ingest_producer.appender.EventAppender` as the
JSON API, with the same backpressure and rate limit. What an agent can act on is kept to one
answer: anything that may pass later (backpressure, the rate limit, Redis failing, the
durability wait) raises a 503 with ``Retry-After``, the one status every agent retries; a
request that can never fit raises a 413 (Telegraf splits the batch).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Final, NamedTuple

import structlog
from litestar.exceptions import HTTPException

from ingest_producer import metrics
from ingest_producer.appender import NotDurable
from ingest_producer.errors import RETRY_AFTER_SECONDS
from ingest_producer.ingest import Guards, registry_client
from ingest_producer.jsonbody import IngestHeaders, gunzip
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.functions import Appended, OverLimit, RateLimited
from ingest_shared.schema import (
    STAMP_AT_APPEND,
    EventOut,
    accept_reading,
    format_ms,
    now_ms,
    valid_labels,
)
from ingest_shared.streams import append_dead_letters, dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from litestar import Request
    from redis.typing import EncodableT

    from ingest_producer.appender import EventAppender
    from ingest_producer.backlog import BacklogMonitor
    from ingest_producer.cardinality import SeriesRegistry
    from ingest_producer.protocols.result import Decoded, ProtocolSample
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.schema import TimeWindow
    from ingest_shared.settings import Settings

# Dead letters written for one request: a body of 100,000 bad lines must not become 100,000
# XADDs (seconds of Redis time); the count of the rest is in the 400 and the log.
MAX_DEAD_LETTERS: Final = 1_000
# What a dead letter written by the producer names as its consumer (no worker read it).
DEAD_LETTER_CONSUMER: Final = "ingest-producer"
# Refusals listed in an error body or a partial-success message; the rest are counted.
MAX_LISTED: Final = 5
_ITEM_MAX: Final = 200
# One "agent_samples_refused" line per protocol and interval, however many requests refuse.
REFUSED_LOG_INTERVAL_S: Final = 5.0
# Bodies larger than this are decoded and checked in a worker thread: a 32 MiB body takes
# seconds of CPU, and on the event loop it would stall every other request (and /health)
# meanwhile. Smaller ones stay inline, where a thread hop would cost more than it saves.
OFFLOAD_BYTES: Final = 1_048_576
_NO_HEADERS: Final = IngestHeaders(ndjson=False, gzip=False, idempotency_key=None)
_GZIP: Final = frozenset({"gzip", "x-gzip"})
_IDENTITY: Final = frozenset({"", "identity"})

logger = structlog.get_logger(__name__)


class Refused(NamedTuple):
    """Something a request held that can never be stored: a decoder's refusal (a raw line, or
    a series or metric description, with its point count) or one sample the event rules
    refused (``sample`` set)."""

    item: str
    reason: str
    points: int = 1
    sample: ProtocolSample | None = None
    event: EventOut | None = None

    def payload(self) -> dict[bytes, bytes]:
        """What its dead letter stores: a refused sample or event as the stream fields it
        would have had (so it can be replayed once the rule it broke allows it), else the raw
        item."""
        event, sample = self.event, self.sample
        if event is None:
            if sample is None:
                return {b"line": self.item.encode()}
            ms = sample.timestamp_ms
            at = STAMP_AT_APPEND if ms is None else format_ms(ms)
            event = EventOut(sample.source, sample.metric, sample.value, at, sample.labels or None)
        return {name: value.encode() for name, value in event.stream_fields().items()}


class Checked(NamedTuple):
    """A decoded body after the event rules: what to append, and what never can be."""

    events: list[EventOut]
    refused: list[Refused]
    skipped: int

    @property
    def refused_count(self) -> int:
        """Data points refused (a refused series counts each of its points)."""
        return sum(refused.points for refused in self.refused)


def describe(sample: ProtocolSample) -> str:
    """A refused sample in a line of text (an error body, a log line)."""
    return _series_text(sample.metric, sample.source, sample.labels)


def describe_event(event: EventOut) -> str:
    """A refused event in a line of text, as :func:`describe` writes a sample."""
    return _series_text(event.metric, event.source, event.labels or {})


def _series_text(metric: str, source: str, labels: dict[str, str]) -> str:
    text = ",".join((f"source={source}", *(f"{name}={value}" for name, value in labels.items())))
    text = f"{metric}{{{text}}}"
    return text if len(text) <= _ITEM_MAX else text[: _ITEM_MAX - 3] + "..."


def listing(refused: list[Refused]) -> str:
    """The first few refusals as ``'item': reason``, then how many more."""
    shown = "; ".join(f"{r.item[:_ITEM_MAX]!r}: {r.reason}" for r in refused[:MAX_LISTED])
    rest = len(refused) - MAX_LISTED
    return shown + (f"; and {rest} more" if rest > 0 else "")


class Intake:
    """The steps the agent protocol routes share, bound to one app's settings and Redis."""

    def __init__(
        self,
        settings: Settings,
        window: TimeWindow,
        appender: EventAppender,
        backlog: BacklogMonitor,
        redis: RedisClient,
        *,
        registry: SeriesRegistry,
    ) -> None:
        self.max_bytes = settings.protocol_max_bytes
        self._registry = registry
        self._open = not settings.write_keys
        self._window = window
        self._appender = appender
        self._backlog = backlog
        self._redis = redis
        self._guards = Guards(settings)
        self._rate_limit = settings.rate_limit
        # Dead letters written here all go to the first shard's stream: a request spans
        # sources (shards), and the read side lists every shard's dead letters alike.
        self._dead_letter_key = settings.keys.shards[0].dead_letter
        self._dead_letter_maxlen = settings.dead_letter_maxlen
        self._next_log: dict[str, float] = {}

    def refuse_browser(self, request: Request[Any, Any, Any]) -> None:
        """Without API keys, a 403 for a request a browser sent (it names an ``Origin``):
        these routes take any Content-Type, so a web page could otherwise write through any
        browser that reaches the producer. Agents never send one."""
        if self._open and request.headers.get("origin") is not None:
            detail = (
                "a browser request (it has an Origin header) may not write without API keys: "
                "set INGEST_API_KEYS, or send from an agent"
            )
            raise HTTPException(detail=detail, status_code=403)

    def check_backlog(self) -> None:
        """A 503 with Retry-After while the workers are more than INGEST_MAX_BACKLOG behind."""
        backlog = self._backlog
        if backlog.overloaded:
            metrics.BACKPRESSURE.inc()
            detail = (
                f"the workers are behind ({backlog.backlog} entries waiting, more than "
                f"INGEST_MAX_BACKLOG={backlog.max_backlog}); nothing was enqueued, retry later"
            )
            raise unavailable(detail)

    async def read_body(self, request: Request[Any, Any, Any]) -> bytes:
        """The body, gunzipped when ``Content-Encoding: gzip`` (413 past the limit as sent or
        decompressed, 400 for a broken gzip body, 415 for any other encoding)."""
        body = await request.body()  # the route's request_max_body_size bounds it as sent
        encoding = (request.headers.get("content-encoding") or "").strip().lower()
        if encoding in _GZIP:
            return gunzip(body, self.max_bytes)
        if encoding not in _IDENTITY:
            detail = f"unsupported Content-Encoding {encoding[:40]!r}: send gzip or none"
            raise HTTPException(detail=detail, status_code=415)
        return body

    async def decode(self, decoder: Callable[[], Decoded], size: int) -> tuple[Decoded, Checked]:
        """``decoder()`` (a body of ``size`` bytes) and its samples checked: in a thread past
        OFFLOAD_BYTES, so a large body does not hold the event loop."""
        if size <= OFFLOAD_BYTES:
            decoded = decoder()
            return decoded, self.check(decoded)
        return await asyncio.to_thread(self._decode_and_check, decoder)

    def _decode_and_check(self, decoder: Callable[[], Decoded]) -> tuple[Decoded, Checked]:
        decoded = decoder()
        return decoded, self.check(decoded)

    def check(self, decoded: Decoded) -> Checked:
        """Every decoded sample checked by the event rules, in order."""
        window, now = self._window, now_ms()
        events: list[EventOut] = []
        refused = [Refused(r.item, r.reason, r.count) for r in decoded.rejected]
        # Samples of one line or series share one labels dict: check each distinct one once.
        # By id(): the dicts live as long as ``decoded``, so an id is never reused meanwhile.
        checked: dict[int, dict[str, str] | InvalidEventError | None] = {}
        for sample in decoded.samples:
            raw = sample.labels
            labels: dict[str, str] | InvalidEventError | None = None
            if raw:
                key = id(raw)
                if key in checked:
                    labels = checked[key]
                else:
                    try:
                        labels = valid_labels(raw)
                    except InvalidEventError as exc:
                        labels = exc
                    checked[key] = labels
            if isinstance(labels, InvalidEventError):
                refused.append(Refused(describe(sample), labels.reason, 1, sample))
                continue
            try:
                event = accept_reading(
                    window,
                    now,
                    metric=sample.metric,
                    source=sample.source,
                    value=sample.value,
                    timestamp_ms=sample.timestamp_ms,
                    labels=labels,
                )
            except InvalidEventError as exc:
                refused.append(Refused(describe(sample), exc.reason, 1, sample))
            else:
                events.append(event)
        return Checked(events, refused, sum(decoded.skipped.values()))

    async def append(self, request: Request[Any, Any, Any], checked: Checked) -> Checked:
        """Append the checked events (all or none) under the caller's rate limit, if one is
        set, except those whose new series a cap refuses: those join the refusals returned.

        Returns once they are in the stream; raises a 503 (may pass later) or a 413 (never
        fits in a rate-limit window); Redis errors propagate (the route's handlers answer 503).
        """
        if self._registry.enabled and checked.events:
            checked = await self._admit(request, checked)
        await self._append(request, checked.events)
        return checked

    async def _admit(self, request: Request[Any, Any, Any], checked: Checked) -> Checked:
        """``checked`` with the events a cap refuses moved to its refusals (the series that
        exist, or fit, still go: an agent's next write would carry the same ones)."""
        registry = self._registry
        client = registry_client(registry, request)
        events = checked.events
        unknown = registry.unknown(events, client)
        if not unknown:
            return checked
        refusals = await registry.admit(events, unknown, client, whole=False)
        if not refusals:
            return checked
        out = {refusal.at for refusal in refusals}
        kept = [event for index, event in enumerate(events) if index not in out]
        refused = [
            Refused(describe_event(events[r.at]), r.message, 1, None, events[r.at])
            for r in refusals
        ]
        return Checked(kept, checked.refused + refused, checked.skipped)

    async def _append(self, request: Request[Any, Any, Any], events: list[EventOut]) -> None:
        if not events:
            return
        limit = shard = None
        if self._rate_limit:
            self._guards.check_size(len(events))
            _, limit, shard = self._guards.of(request, _NO_HEADERS, b"", b"")
        result = await self._appender.append(events, None, limit, shard)
        if isinstance(result, Appended):
            return
        if isinstance(result, NotDurable):
            metrics.DURABILITY_FAILURES.inc()
            detail = f"not confirmed durable: {result.detail}; the samples may be enqueued already"
            raise unavailable(detail)
        metrics.RATE_LIMITED.inc()
        if isinstance(result, OverLimit):
            detail = (
                f"{len(events)} samples in one request, but INGEST_RATE_LIMIT allows "
                f"{result.limit} per window: split the request; nothing was enqueued"
            )
            raise HTTPException(detail=detail, status_code=413)
        if isinstance(result, RateLimited):
            # Not 429: agents retry a 503 with Retry-After, while some drop a 429 (OTLP).
            retry_after = max(1, math.ceil(result.retry_after_ms / 1000))
            detail = "rate limit exceeded (INGEST_RATE_LIMIT); nothing was enqueued, retry later"
            raise unavailable(detail, retry_after)
        # Duplicate or Conflict need an idempotency key, which these requests never have.
        msg = f"unexpected append result {result!r}"
        raise RuntimeError(msg)

    async def dead_letter(self, refused: list[Refused], what: str) -> int:
        """Write the first MAX_DEAD_LETTERS of ``refused`` to the dead-letter stream, each with
        the reason ``<what>: <reason>``; returns how many were written."""
        now = now_ms()
        letters: list[dict[EncodableT, EncodableT]] = [
            dead_letter_fields(b"", f"{what}: {r.reason}", r.payload(), DEAD_LETTER_CONSUMER, now)
            for r in refused[:MAX_DEAD_LETTERS]
        ]
        if letters:
            await append_dead_letters(
                self._redis, self._dead_letter_key, letters, self._dead_letter_maxlen
            )
        return len(letters)

    def count(self, protocol: str, checked: Checked) -> None:
        """The request's samples in the metrics, and a (throttled) log line for refusals."""
        samples = metrics.PROTOCOL_SAMPLES
        if checked.events:
            samples.labels(protocol, "enqueued").inc(len(checked.events))
            # Every appended event, whichever route took it (dashboards and alerts read this).
            metrics.EVENTS_ACCEPTED.inc(len(checked.events))
        if checked.skipped:
            samples.labels(protocol, "skipped").inc(checked.skipped)
        if not checked.refused:
            return
        refused = checked.refused_count
        samples.labels(protocol, "refused").inc(refused)
        now = time.monotonic()
        if now >= self._next_log.get(protocol, 0.0):
            self._next_log[protocol] = now + REFUSED_LOG_INTERVAL_S
            first = checked.refused[0]
            logger.warning(
                "agent_samples_refused",
                protocol=protocol,
                refused=refused,
                enqueued=len(checked.events),
                item=first.item[:_ITEM_MAX],
                reason=first.reason,
            )


def unavailable(detail: str, retry_after: int = RETRY_AFTER_SECONDS) -> HTTPException:
    """A 503 agents retry after ``retry_after`` seconds."""
    return HTTPException(detail=detail, status_code=503, headers={"Retry-After": str(retry_after)})
