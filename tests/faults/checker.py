"""The loss checker every fault test ends with.

The load (``tests.faults.harness.Load``) sends events with a unique (metric, source,
occurredAt) and its sequence number as the value, and records what each request got back:

* **accepted**: a 2xx. Each such event must end in its per-device series with its value, or in
  the dead-letter stream with a reason.
* **refused**: a 4xx, or a 503 whose detail says "nothing was enqueued". Such an event must
  appear nowhere: not in a series, not in the stream, not among the dead letters.
* **maybe**: no answer, or a 503 that says the events MAY have been enqueued (a timeout after
  the append was sent, a durability wait that did not confirm): may appear, or not.

After the fault and a drain, nothing may be pending or undelivered, and every closed bucket of
every configured per-device rollup must equal what the stored samples imply. A stored sample
that matches no accepted or maybe event is a duplicate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, to_epoch_ms

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from redis.asyncio import Redis

    from ingest_shared.keys import Keys, Rollup
    from ingest_shared.settings import Settings

# The 503 details of the producer (ingest_producer.errors / ingest): one of them says this.
NOT_ENQUEUED = "nothing was enqueued"
# Stream and dead-letter stream entries read per XRANGE.
_PAGE = 10_000
_TOLERANCE = 1e-9

# (source, timestamp ms): what identifies one reading of the load's one metric.
Reading: TypeAlias = tuple[str, int]
# One stream entry as redis-py parses XRANGE: (id, fields).
StreamEntry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


class Fate(enum.Enum):
    """What a request's answer promised about its events."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    MAYBE = "maybe"


def fate_of(status: int, detail: str) -> Fate:
    """Accepted (2xx), refused (4xx, or a 503 saying nothing was enqueued), else maybe."""
    if 200 <= status < 300:
        return Fate.ACCEPTED
    if 400 <= status < 500 or (status == 503 and NOT_ENQUEUED in detail):
        return Fate.REFUSED
    return Fate.MAYBE


@dataclass(frozen=True, slots=True)
class Event:
    """One reading the load sent: its device and timestamp identify it, its value is ``n``."""

    n: int
    metric: str
    source: str
    timestamp_ms: int

    @property
    def reading(self) -> Reading:
        return (self.source, self.timestamp_ms)

    @property
    def body(self) -> dict[str, object]:
        occurred = format_ms(self.timestamp_ms)
        return {
            "source": self.source,
            "metric": self.metric,
            "value": self.n,
            "occurredAt": occurred,
        }


@dataclass
class Outcome:
    """One request: its events, when it was sent, the status (0: no answer) and the detail."""

    events: list[Event]
    sent_at: float
    status: int = 0
    detail: str = ""

    @property
    def fate(self) -> Fate:
        return fate_of(self.status, self.detail)


@dataclass
class Report:
    """The checker's verdict; ``problems()`` is empty when nothing was lost or invented."""

    name: str = ""
    accepted: int = 0
    stored: int = 0
    dead_lettered: int = 0
    lost: list[Event] = field(default_factory=list)
    wrong: list[Event] = field(default_factory=list)
    duplicated: list[Reading] = field(default_factory=list)
    maybe: int = 0
    maybe_seen: int = 0
    refused: int = 0
    refused_seen: list[Event] = field(default_factory=list)
    missing_in_metric_series: list[Event] = field(default_factory=list)
    pending: int = 0
    undelivered: int = 0
    buckets: int = 0
    bucket_mismatches: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def lost_count(self) -> int:
        return len(self.lost)

    def problems(self) -> list[str]:
        """One line per broken guarantee, with a few examples."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} accepted events lost, e.g. {_some(self.lost)}")
        if self.wrong:
            found.append(f"{len(self.wrong)} stored with another value, e.g. {_some(self.wrong)}")
        if self.duplicated:
            found.append(
                f"{len(self.duplicated)} stored samples match no accepted or maybe event, "
                f"e.g. {_some(self.duplicated)}"
            )
        if self.refused_seen:
            found.append(
                f"{len(self.refused_seen)} refused events appear, e.g. {_some(self.refused_seen)}"
            )
        if self.missing_in_metric_series:
            found.append(
                f"{len(self.missing_in_metric_series)} stored events missing from the per-metric "
                f"series, e.g. {_some(self.missing_in_metric_series)}"
            )
        if self.pending or self.undelivered:
            found.append(f"{self.pending} pending and {self.undelivered} undelivered entries")
        if self.bucket_mismatches:
            found.append(
                f"{len(self.bucket_mismatches)} of {self.buckets} closed rollup buckets differ "
                f"from the stored samples, e.g. {_some(self.bucket_mismatches)}"
            )
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def line(self) -> str:
        return (
            f"accepted {self.accepted}, stored {self.stored}, dead-lettered "
            f"{self.dead_lettered}, lost {len(self.lost)}, duplicated {len(self.duplicated)}; "
            f"maybe {self.maybe_seen}/{self.maybe} appeared, refused {self.refused} "
            f"({len(self.refused_seen)} appeared); {self.buckets} closed rollup buckets "
            f"({len(self.bucket_mismatches)} wrong); pending {self.pending}, undelivered "
            f"{self.undelivered}; statuses {dict(sorted(self.statuses.items()))}"
        )


def _some(items: Sequence[object], count: int = 3) -> str:
    return ", ".join(map(str, items[:count]))


TABLE_COLUMNS = (
    "fault",
    "accepted",
    "stored",
    "dead-lettered",
    "lost",
    "duplicated",
    "maybe (appeared)",
    "refused",
    "rollup buckets",
    "notes",
)


def table(reports: Iterable[Report]) -> list[str]:
    """The reports as a Markdown table, one row per fault."""
    rows = [TABLE_COLUMNS]
    for r in reports:
        notes = "; ".join(f"{key} {value}" for key, value in r.notes.items())
        rows.append(
            (
                r.name,
                f"{r.accepted:,}",
                f"{r.stored:,}",
                f"{r.dead_lettered:,}",
                f"{len(r.lost):,}",
                f"{len(r.duplicated):,}",
                f"{r.maybe:,} ({r.maybe_seen:,})",
                f"{r.refused:,}",
                f"{r.buckets:,} ({len(r.bucket_mismatches)} wrong)",
                notes,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


# --- what Redis holds ---------------------------------------------------------------------


async def series_samples(redis: Redis, key: str) -> dict[int, float]:
    """Every sample of one series (empty if it does not exist)."""
    if not await redis.exists(key):
        return {}
    return {int(ts): float(value) for ts, value in await call(redis, "TS.RANGE", key, "-", "+")}


async def stream_entries(
    redis: Redis, key: str, start: bytes = b"-", end: bytes = b"+"
) -> list[StreamEntry]:
    """Every entry of stream ``key`` from ``start`` to ``end``, a page at a time."""
    entries: list[StreamEntry] = []
    while True:
        page: list[StreamEntry] = await call(redis, "XRANGE", key, start, end, "COUNT", _PAGE)
        entries += page
        if len(page) < _PAGE:
            return entries
        start = b"(" + page[-1][0]


def reading_of(fields: dict[str, str], metric: str) -> Reading | None:
    """The (source, timestamp) of stream fields of ``metric``, or None if they are not one."""
    try:
        if fields.get("metric") != metric:
            return None
        occurred = fields["occurredAt"]
        moment = dt.datetime.fromisoformat(occurred)
        return (fields["source"], to_epoch_ms(moment))
    except (KeyError, ValueError):
        return None


async def dead_letters(redis: Redis, keys: Keys, metric: str) -> dict[Reading, str]:
    """The readings of ``metric`` among the dead letters, with their reasons."""
    found: dict[Reading, str] = {}
    letters = [
        entry for shard in keys.shards for entry in await stream_entries(redis, shard.dead_letter)
    ]
    for _, fields in letters:
        try:
            payload = json.loads(fields.get(k.DL_PAYLOAD.encode(), b"{}"))
        except ValueError:  # not one of ours: the checker only looks for the load's events
            continue
        reading = reading_of(payload, metric) if isinstance(payload, dict) else None
        if reading is not None:
            found[reading] = fields.get(k.DL_REASON.encode(), b"").decode()
    return found


async def stream_readings(redis: Redis, keys: Keys, metric: str) -> set[Reading]:
    """The readings of ``metric`` still in the stream (trimming removes processed ones)."""
    found = set()
    entries = [
        entry for shard in keys.shards for entry in await stream_entries(redis, shard.stream)
    ]
    for _, fields in entries:
        text = {key.decode(): value.decode() for key, value in fields.items()}
        reading = reading_of(text, metric)
        if reading is not None:
            found.add(reading)
    return found


@dataclass(frozen=True)
class QueueState:
    """Entries the group delivered but nobody acknowledged, and entries never delivered."""

    pending: int
    undelivered: int

    @property
    def empty(self) -> bool:
        return self.pending == 0 and self.undelivered == 0


async def queue_state(redis: Redis, settings: Settings) -> QueueState:
    """Where the consumer group stands, summed over the shards."""
    states = [await _stream_state(redis, shard.stream, settings) for shard in settings.keys.shards]
    return QueueState(sum(s.pending for s in states), sum(s.undelivered for s in states))


async def _stream_state(redis: Redis, stream: str, settings: Settings) -> QueueState:
    """Where the consumer group stands on one stream (nothing at all without it)."""
    if not await redis.exists(stream):
        return QueueState(0, 0)
    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    group = next((g for g in groups if g["name"] == settings.consumer_group.encode()), None)
    info: dict[str, Any] = await redis.xinfo_stream(stream)
    last = info["last-generated-id"]
    if group is None:
        return QueueState(0, int(info["length"]))
    if group["last-delivered-id"] == last:
        undelivered = 0
    elif group.get("lag") is not None:
        undelivered = int(group["lag"])
    else:
        after = b"(" + group["last-delivered-id"]
        undelivered = len(await stream_entries(redis, stream, after))
    return QueueState(int(group["pending"]), undelivered)


# --- rollups --------------------------------------------------------------------------------


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "avg": statistics.fmean,
    "sum": math.fsum,
    "count": lambda values: float(len(values)),
    "min": min,
    "max": max,
    "first": lambda values: values[0],
    "last": lambda values: values[-1],
    "range": lambda values: max(values) - min(values),
    "std.p": statistics.pstdev,
}


def expected_buckets(samples: dict[int, float], rollup: Rollup) -> dict[int, float]:
    """Each closed bucket of ``samples`` (one followed by a later sample) and its aggregate."""
    if not samples:
        return {}
    width = rollup.bucket_ms
    open_bucket = max(samples) - max(samples) % width
    grouped: dict[int, list[float]] = defaultdict(list)
    for ts in sorted(samples):
        bucket = ts - ts % width
        if bucket < open_bucket:
            grouped[bucket].append(samples[ts])
    aggregate = _AGGREGATES[rollup.agg]
    return {bucket: aggregate(values) for bucket, values in grouped.items()}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)


async def rollup_mismatches(
    redis: Redis, keys: Keys, metric: str, source: str, samples: dict[int, float]
) -> tuple[int, list[str]]:
    """Closed buckets of every rollup of one device series checked, and those that differ."""
    checked, wrong = 0, []
    for rollup in keys.rollups:
        expected = expected_buckets(samples, rollup)
        stored = await series_samples(redis, keys.source_rollup_of(metric, source, rollup))
        open_bucket = max(samples) - max(samples) % rollup.bucket_ms if samples else 0
        for bucket in sorted(expected.keys() | {b for b in stored if b < open_bucket}):
            checked += 1
            want, got = expected.get(bucket), stored.get(bucket)
            if want is None or got is None or not _close(want, got):
                wrong.append(f"{source} {rollup.name}@{bucket}: stored {got}, samples say {want}")
    return checked, wrong


# --- the verdict ----------------------------------------------------------------------------


async def check(
    redis: Redis,
    settings: Settings,
    outcomes: Sequence[Outcome],
    *,
    name: str = "",
    since: float | None = None,
) -> Report:
    """Judge what Redis holds against what every request was told.

    ``since``: requests sent before it (a ``time.monotonic()`` value) count as maybe whatever
    they got, for faults that are allowed to lose what came before them (a FLUSHALL).
    """
    keys = settings.keys
    fates: dict[Reading, tuple[Event, Fate]] = {}
    statuses: dict[int, int] = defaultdict(int)
    metrics, sources = set(), set()
    for outcome in outcomes:
        statuses[outcome.status] += 1
        fate = outcome.fate if since is None or outcome.sent_at >= since else Fate.MAYBE
        for event in outcome.events:
            fates[event.reading] = (event, fate)
            metrics.add(event.metric)
            sources.add(event.source)
    [metric] = metrics or {"-"}
    report = Report(name=name, statuses=dict(statuses))

    stored: dict[Reading, float] = {}
    by_source: dict[str, dict[int, float]] = {}
    for source in sorted(sources):
        samples = await series_samples(redis, keys.source_raw(metric, source))
        by_source[source] = samples
        stored.update({(source, ts): value for ts, value in samples.items()})
    # Each shard's owner writes its own partial of the per-metric series: an event must be in
    # the partial of its source's shard.
    per_metric = {
        shard.tag: await series_samples(redis, keys.metric_raw(metric, shard))
        for shard in keys.shards
    }
    letters = await dead_letters(redis, keys, metric)
    in_stream = await stream_readings(redis, keys, metric)

    _judge_events(
        report,
        keys=keys,
        fates=fates,
        stored=stored,
        letters=letters,
        in_stream=in_stream,
        per_metric=per_metric,
    )
    report.duplicated = sorted(r for r in stored if r not in fates or fates[r][1] is Fate.REFUSED)
    for source, samples in by_source.items():
        checked, wrong = await rollup_mismatches(redis, keys, metric, source, samples)
        report.buckets += checked
        report.bucket_mismatches += wrong
    state = await queue_state(redis, settings)
    report.pending, report.undelivered = state.pending, state.undelivered
    return report


def _judge_events(
    report: Report,
    *,
    keys: Keys,
    fates: dict[Reading, tuple[Event, Fate]],
    stored: dict[Reading, float],
    letters: dict[Reading, str],
    in_stream: set[Reading],
    per_metric: dict[str, dict[int, float]],
) -> None:
    """Count each sent event by what it was promised and where it is."""
    for reading, (event, fate) in fates.items():
        value = stored.get(reading)
        if fate is Fate.ACCEPTED:
            report.accepted += 1
            if value is not None:
                report.stored += 1
                if value != event.n:
                    report.wrong.append(event)
            elif letters.get(reading):
                report.dead_lettered += 1
            else:
                report.lost.append(event)
        elif fate is Fate.MAYBE:
            report.maybe += 1
            report.maybe_seen += value is not None or reading in letters
        else:
            report.refused += 1
            if value is not None or reading in letters or reading in in_stream:
                report.refused_seen.append(event)
        partial = per_metric[keys.shard_of_source(event.source).tag]
        if value is not None and partial.get(event.timestamp_ms) != event.n:
            report.missing_in_metric_series.append(event)


async def drain(redis: Redis, settings: Settings, within_s: float, poll_s: float = 0.25) -> float:
    """Wait until the group has nothing pending or undelivered (twice in a row); the seconds.

    Fails the test after ``within_s``, naming what is still pending.
    """
    started = time.monotonic()
    empty_polls = 0
    while empty_polls < 2:
        state = await queue_state(redis, settings)
        empty_polls = empty_polls + 1 if state.empty else 0
        if time.monotonic() - started > within_s:
            raise AssertionError(f"not drained within {within_s} s: {state}")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started
