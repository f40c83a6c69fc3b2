"""Request and response bodies of the producer's routes (msgspec Structs, one shared base)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ingest_shared.schema import DATE_TIME_OUT, Base, EventOut

# The worker's consumer-name rule (INGEST_CONSUMER_NAME): \A...\Z, never ^...$.
Consumer = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.:@/\-]{1,128}\Z")]
# 1 to 10000, any integral number: JSON Schema calls 482.0 an integer, so clients may send one,
# while msgspec's int refuses it. A float that is a multiple of 1 takes both; __post_init__
# turns it back into an int, and the OpenAPI document says integer (ingest_producer.openapi).
WholeCount = Annotated[float, msgspec.Meta(ge=1, le=10_000, multiple_of=1)]
# A full stream entry id. At most 19 digits a part: each fits the 64 bits Redis allows (20
# digits may not, and Redis refuses the command). reading.params checks ids with it.
STREAM_ID_PATTERN = r"\A[0-9]{1,19}-[0-9]{1,19}\Z"
# A dead-letter id with several stream shards: the stream id and its shard (below 1024, no
# leading zeros), since two shards' dead letters can have the same id.
QUALIFIED_ID_PATTERN = r"\A[0-9]{1,19}-[0-9]{1,19}@(?:0|[1-9][0-9]{0,3})\Z"
# A `before` cursor with several shards: qualified, or plain (older than it in every shard).
CURSOR_ID_PATTERN = r"\A[0-9]{1,19}-[0-9]{1,19}(?:@(?:0|[1-9][0-9]{0,3}))?\Z"
# A value read back from Redis. Stored samples are finite, but an aggregate may not be (a sum
# past 1.8e308 is inf, an average of those NaN); msgspec writes those as null, and so the
# schema says number or null.
Value = float | None


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
    count: WholeCount = 10

    def __post_init__(self) -> None:
        self.count = int(self.count)


class Processed(Base):
    """What one ``/workers/process`` call did (the tutorial's four counts)."""

    read: int
    processed: int
    dead_lettered: int
    acked: int


class ConsumerInfo(Base):
    """One consumer of the group: entries it holds unacknowledged, and ms since it last read."""

    name: str
    pending: int
    idleMs: int


class QueueSummary(Base):
    """Entries in the stream now, delivered but unacknowledged ones, dead-lettered ones, and
    entries ever appended (``added``: the stream is trimmed, so ``total`` stops growing).

    ``lag``: entries not yet delivered to the group (null when Redis cannot tell, e.g. after
    deletions); ``oldestPendingAgeMs``: age of the oldest delivered but unacknowledged entry
    (by its id's time; null when nothing is pending)."""

    total: int
    pending: int
    dead_lettered: int
    added: int = 0
    lag: int | None = None
    oldestPendingAgeMs: int | None = None
    consumers: list[ConsumerInfo] = msgspec.field(default_factory=list)


class Point(Base):
    """The latest sample of a series, or a bucket; ``value`` is null when not finite."""

    timestampMs: int
    value: Value


class MetricSummary(Base):
    """Latest raw sample and latest closed rollup bucket of one metric; null until there is one.

    ``rollup`` is the first configured rollup; ``rollups`` has every one by name (avg_60000).
    Buckets are merged exactly across the metric's per-shard series; first, last and std.p
    rollups cannot be and are null."""

    metric: str
    raw: Point | None
    rollup: Point | None
    rollups: dict[str, Point | None] = msgspec.field(default_factory=dict)


class Cardinality(Base):
    """Distinct device series and metric names the writers created (the registry's counts)
    and their caps (INGEST_MAX_SERIES, INGEST_MAX_METRICS; null: none)."""

    series: int
    maxSeries: int | None
    metrics: int
    maxMetrics: int | None


class Summary(Base):
    """Queue health, the series count and the latest values of every metric, sorted by
    metric name."""

    queue: QueueSummary
    metrics: list[MetricSummary]
    cardinality: Cardinality


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


# --- the read side ------------------------------------------------------------------------


class AccessInfo(Base):
    """Whether keys are required, and what the presented key may do."""

    authEnabled: bool
    access: Literal["write", "read", "none"]


class MetricInfo(Base):
    """One metric: its sources (the list only when there are at most 50), its latest raw
    sample (per-metric series) and the latest closed bucket of each configured rollup, merged
    exactly across the metric's per-shard series (first, last and std.p cannot be: null)."""

    metric: str
    sourceCount: int
    sources: list[str] | None
    latest: Point | None
    rollups: dict[str, Point | None]


class MetricList(Base):
    """Every metric, sorted by name."""

    metrics: list[MetricInfo]


class RangePoint(Base, omit_defaults=True):
    """A raw sample or a bucket (``timestampMs`` = bucket start). Fleet raw points name their
    ``source``; points of a series with event labels carry its ``labels``."""

    timestampMs: int
    value: Value
    source: str | None = None
    labels: dict[str, str] | None = None


class RangeResult(Base, rename={"from_": "from"}):
    """Points of one metric, for one source or the fleet, raw or aggregated.

    ``origin``: ``rollup`` (a configured rollup series) or ``raw`` (aggregated by Redis from
    the raw series). ``lastBucketOpen``: the last bucket still holds the newest sample of its
    series, so it may change (it was computed from raw samples)."""

    metric: str
    source: str | None
    agg: str | None
    bucketMs: int | None
    from_: int
    to: int
    origin: Literal["rollup", "raw"]
    lastBucketOpen: bool
    points: list[RangePoint]


class Chart(Base):
    """One metric's chart: fine-grained points and the first rollup over the window."""

    metric: str
    raw: list[Point]
    rawBucketMs: int | None
    rollup: list[Point]
    lastBucketOpen: bool


class Charts(Base, rename={"from_": "from"}):
    """Every metric's chart over ``window`` (fleet, or one ``source``)."""

    window: str
    from_: int
    to: int
    source: str | None
    rollup: str
    charts: list[Chart]


class SourceMetric(Base, omit_defaults=True):
    """The latest sample of one (source, metric) and whether it is older than the limit."""

    metric: str
    timestampMs: int
    value: Value
    stale: bool
    labels: dict[str, str] | None = None  # the series' event labels, if it has any


class SourceInfo(Base):
    """One device: stale when any of its metrics is silent for longer than the limit."""

    source: str
    stale: bool
    metrics: list[SourceMetric]


class SourceList(Base):
    """Devices sorted by name, one page of them; ``now`` is the clock the staleness was judged
    by; ``next``: pass it as ``cursor`` for the next page (null on the last)."""

    staleAfterMs: int
    now: int
    sources: list[SourceInfo]
    next: str | None = None


class DeadLetter(Base):
    """One dead-lettered entry; ``payload`` is the original fields (an object) when it is
    JSON, else the stored text. Fields missing from the entry are null."""

    id: str
    messageId: str | None
    reason: str | None
    payload: dict[str, Any] | str | None
    consumer: str | None
    failedAt: Annotated[str, DATE_TIME_OUT] | None


class DeadLetterPage(Base):
    """Dead letters, newest first; pass ``next`` as ``before`` for the next page."""

    deadLetters: list[DeadLetter]
    next: str | None


class ReplayRequest(Base):
    """Either ``ids`` (dead-letter ids, at most 10000) or ``all: true`` with ``max`` (the
    oldest ``max`` dead letters)."""

    # The pattern is only published: replay checks each id itself, to name the bad one.
    ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(extra_json_schema={"pattern": STREAM_ID_PATTERN})]],
            msgspec.Meta(max_length=10_000),
        ]
        | None
    ) = None
    all: bool = False
    max: WholeCount = 1_000

    def __post_init__(self) -> None:
        self.max = int(self.max)


class ShardedReplayRequest(ReplayRequest):
    """Either ``ids`` (dead-letter ids qualified by their shard, ``<id>@<shard>``, at most
    10000) or ``all: true`` with ``max`` (the oldest ``max`` dead letters of every shard)."""

    ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(extra_json_schema={"pattern": QUALIFIED_ID_PATTERN})]],
            msgspec.Meta(max_length=10_000),
        ]
        | None
    ) = None


class StillInvalid(Base):
    """A dead letter that still fails validation, with the reason it fails now."""

    id: str
    reason: str


class ReplayResult(Base):
    """``replayed`` entries went back to the stream (and left the dead-letter stream)."""

    replayed: int
    still_invalid: list[StillInvalid]
    missing: list[str]


class Deleted(Base):
    """How many dead letters were deleted."""

    deleted: int
