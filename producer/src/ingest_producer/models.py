"""Request and response bodies of the producer's routes (msgspec Structs, one shared base)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ingest_shared.schema import Base, EventOut

# The worker's consumer-name rule (INGEST_CONSUMER_NAME): \A...\Z, never ^...$.
Consumer = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.:@/\-]{1,128}\Z")]
BatchCount = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class Enqueued(Base):
    """The stream id of an accepted event and the event exactly as it was enqueued."""

    id: str
    value: EventOut


class BatchEnqueued(Base):
    """The stream ids of an accepted batch, in the order of its events."""

    ids: list[str]
    count: int


class ProcessRequest(Base):
    """Drain up to ``count`` new entries once, as consumer ``consumer`` of the group."""

    consumer: Consumer
    count: BatchCount = 10


class QueueSummary(Base):
    """Entries in the stream now, delivered but unacknowledged ones, dead-lettered ones, and
    entries ever appended (``added``: the stream is trimmed, so ``total`` stops growing)."""

    total: int
    pending: int
    dead_lettered: int
    added: int = 0


class Point(Base):
    """The latest sample of a series."""

    timestampMs: int
    value: float


class MetricSummary(Base):
    """Latest raw sample and latest closed rollup bucket of one metric; null until there is one."""

    metric: str
    raw: Point | None
    rollup: Point | None


class Summary(Base):
    """Queue health and the latest values of every metric, sorted by metric name."""

    queue: QueueSummary
    metrics: list[MetricSummary]


class RecentEntry(Base):
    """One stream entry. ``value`` holds its fields as stored; a numeric ``value`` is a number.

    Entries written by other producers are shown as they are (strings), never rejected.
    """

    id: str
    value: dict[str, str | float]


class Health(Base, omit_defaults=True):
    """Liveness / readiness answer; ``reason`` (only when not ready) says why."""

    status: str
    reason: str | None = None
    # /ready only: entries waiting for the workers (undelivered + pending), and whether writes
    # are being refused with 503 because it exceeds INGEST_MAX_BACKLOG.
    backlog: int | None = None
    overloaded: bool | None = None


class FieldError(Base, omit_defaults=True):
    """One problem with the request: the field it concerns (null: the body or event as a
    whole) and, in a batch, the ``index`` of the event (0-based; NDJSON: blank lines skipped)."""

    field: str | None
    message: str
    index: int | None = None


class ErrorBody(Base):
    """The body of every error response, whatever the status code."""

    status_code: int
    detail: str
    errors: list[FieldError] = msgspec.field(default_factory=list)
