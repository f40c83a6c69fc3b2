"""The only place Redis key names and stream field names are built.

Series keys put a hash tag in every name so a raw series and its rollups always share a slot
on Redis Cluster (TS.CREATERULE needs both on one node).

Every series has one writer: the worker that owns its shard. A device's series
(``{metric|source}``, on a cluster ``{<shard tag>}:metric|source``) gets samples from its
source's shard only. The per-metric (fleet) series is split the same way: one *partial* per
shard (``{<shard tag>}:metric``), written by that shard's owner alone, carrying the rollups
that merge exactly across partials (:func:`partial_rollups`); the reading side merges them.
Two workers writing one series interleave their batches, and every interleaved sample is an
upsert that makes RedisTimeSeries recompute the open rollup bucket (measured: Redis CPU per
event 7.4 us with one worker, 14.4 with two and 18.0 with four on one shared series).

Every key the services touch starts with one prefix (``INGEST_KEY_PREFIX``, ``telemetry:``),
so one ACL pattern (``~telemetry:*``) covers them; keys the append function touches with the
stream carry the stream's hash tag, so one call never spans two slots.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Stream entry fields, as the tutorial writes them.
FIELD_SOURCE = b"source"
FIELD_METRIC = b"metric"
FIELD_VALUE = b"value"
FIELD_OCCURRED_AT = b"occurredAt"
# Only on events with labels: their canonical JSON object (keys sorted, no spaces). Always the
# last field, so an unlabeled event is the tutorial's four fields exactly.
FIELD_LABELS = b"labels"
# What the worker's read functions put in place of an entry over INGEST_MAX_ENTRY_BYTES: its
# size and a bounded prefix of its fields (see lua/worker.lua).
FIELD_OVERSIZED = b"__oversized__"
FIELD_PREFIX = b"__prefix__"

# Dead-letter entry fields.
DL_MESSAGE_ID = "messageId"
DL_REASON = "reason"
DL_PAYLOAD = "payload"
DL_CONSUMER = "consumer"
DL_FAILED_AT = "failedAt"

# Labels on every series, for TS.MGET/TS.MRANGE FILTER.
LABEL_METRIC = "metric"
LABEL_SOURCE = "source"
LABEL_KIND = "kind"
# On per-metric partials: the index of the shard that writes it.
LABEL_SHARD = "shard"
KIND_RAW = "raw"
KIND_ROLLUP = "rollup"
KIND_SOURCE_RAW = "source-raw"
KIND_SOURCE_ROLLUP = "source-rollup"
# Rollup series also carry their aggregation and bucket, so a FILTER can pick one rollup.
LABEL_AGG = "agg"
LABEL_BUCKET_MS = "bucketMs"

# Label names the service sets itself: an event's own labels may not use them.
RESERVED_LABELS = frozenset(
    (LABEL_METRIC, LABEL_SOURCE, LABEL_KIND, LABEL_SHARD, LABEL_AGG, LABEL_BUCKET_MS)
)
# TS.CREATE refuses a label value holding "," "(" or ")" ("Couldn't parse LABELS"), which
# Prometheus and OTLP values may hold (prometheus_build_info's tags="netgo,builtinassets"): such
# characters are stored percent-encoded, "%" too, and decoded wherever labels are read.
_LABEL_VALUE_ESCAPES = str.maketrans({"%": "%25", ",": "%2C", "(": "%28", ")": "%29"})
_LABEL_VALUE_ESCAPED = re.compile("%(25|2C|28|29)")
_LABEL_VALUE_UNESCAPES = {"25": "%", "2C": ",", "28": "(", "29": ")"}


def stored_label_value(value: str) -> str:
    """An event label's value as a TimeSeries label (and a FILTER term) holds it."""
    return value.translate(_LABEL_VALUE_ESCAPES)


def event_labels(labels: dict[str, str | None]) -> dict[str, str] | None:
    """An event's own labels among a series' TimeSeries labels (None if it has none)."""
    found = {
        name: _LABEL_VALUE_ESCAPED.sub(_unescape, value)
        for name, value in labels.items()
        if value is not None and name not in RESERVED_LABELS
    }
    return found or None


def _unescape(match: re.Match[str]) -> str:
    return _LABEL_VALUE_UNESCAPES[match[1]]


# Between a device's source and its label set's digest in a series identity (a source never
# holds it: see schema.SOURCE_PATTERN).
_IDENTITY_MARK = "|"

# The aggregations a rollup (INGEST_ROLLUPS) or a range query may use.
AGGREGATIONS = ("avg", "min", "max", "sum", "count", "first", "last", "range", "std.p")
# What an aggregation over many series is merged from: per-series parts that combine exactly
# (an average is sum of sums / sum of counts, never an average of averages). first, last and
# std.p have no such parts: they cannot be merged across devices or shards.
MERGE_PARTS: dict[str, tuple[str, ...]] = {
    "avg": ("sum", "count"),
    "sum": ("sum",),
    "count": ("count",),
    "min": ("min",),
    "max": ("max",),
    "range": ("max", "min"),
}


@dataclass(frozen=True, slots=True)
class Rollup:
    """One configured rollup: ``agg`` over buckets of ``bucket_ms``, named ``avg_60000``."""

    agg: str
    bucket_ms: int

    @property
    def name(self) -> str:
        """``<agg>_<bucket_ms>``: the API's name and the last part of the series key."""
        return f"{self.agg}_{self.bucket_ms}"


# The tutorial's one rollup (INGEST_ROLLUPS unset: avg over INGEST_ROLLUP_BUCKET_MS).
DEFAULT_ROLLUPS = (Rollup("avg", 60_000),)


def partial_rollups(rollups: tuple[Rollup, ...]) -> tuple[Rollup, ...]:
    """The rollups a per-metric partial carries for the configured ``rollups``: each one's
    :data:`MERGE_PARTS`, once (``avg:60000`` gives ``sum_60000`` and ``count_60000``)."""
    parts: dict[Rollup, None] = {}
    for rollup in rollups:
        for agg in MERGE_PARTS.get(rollup.agg, ()):
            parts[Rollup(agg, rollup.bucket_ms)] = None
    return tuple(parts)


class StreamKeys(Protocol):
    """A stream and its dead-letter stream: a :class:`Shard`, or :class:`Keys` (its first)."""

    @property
    def stream(self) -> str: ...

    @property
    def dead_letter(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Shard:
    """One stream shard: its stream, dead letters, idempotency records and rate counters all
    carry the shard's hash tag, so every function call on a shard stays in one slot."""

    index: int
    tag: str
    stream: str
    dead_letter: str
    prefix: str

    def idempotency(self, digest: str) -> str:
        """Stored response of one Idempotency-Key; ``digest`` is a hash, never the raw key."""
        return f"{self.prefix}idempotency:{{{self.tag}}}:{digest}"

    def rate_limit(self, client_id: str) -> str:
        """The fixed-window event counter of one API client."""
        return f"{self.prefix}rate:{{{self.tag}}}:{client_id}"

    def lease(self) -> str:
        """Which worker owns this shard (a key with a TTL, in the shard's slot)."""
        return f"{self.prefix}lease:{{{self.tag}}}"


@functools.cache
def spread_tags(count: int) -> tuple[str, ...]:
    """``count`` hash tags whose slots fall in ``count`` equal slot ranges, in order: shards
    spread evenly over primaries that hold equal contiguous ranges (what ``redis-cli --cluster
    create`` makes). Deterministic: every process derives the same tags."""
    tags = []
    for index in range(count):
        low = index * REDIS_CLUSTER_HASH_SLOTS // count
        high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        attempt = 0
        while not low <= key_slot(f"s{index}.{attempt}".encode()) < high:
            attempt += 1
        tags.append(f"s{index}.{attempt}")
    return tuple(tags)


def series_identity(source: str, labels_digest: str) -> str:
    """What names a device's series with a label set: its source and the set's digest (an
    event without labels is named by its source alone, as before labels existed)."""
    return f"{source}{_IDENTITY_MARK}{labels_digest}"


def identity_source(identity: str) -> str:
    """The source of a :func:`series_identity` (or of a plain source: itself)."""
    return identity.partition(_IDENTITY_MARK)[0]


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment; build it once from the settings and pass it down."""

    stream: str
    dead_letter: str
    metrics: str
    series_prefix: str = "telemetry:ts"
    # Every raw series gets one rollup series per entry; the first is "the" rollup.
    rollups: tuple[Rollup, ...] = DEFAULT_ROLLUPS
    # What every key starts with (the keys above too, unless configured otherwise).
    prefix: str = "telemetry:"
    # INGEST_STREAM_SHARDS, and whether Redis is a cluster (per-device series then carry their
    # shard's tag, so one worker batch writes them in one command).
    stream_shards: int = 1
    cluster: bool = False
    shards: tuple[Shard, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.stream_shards == 1 and not self.cluster:
            # One stream on one node: the names of every release before sharding.
            only = Shard(0, hash_tag(self.stream), self.stream, self.dead_letter, self.prefix)
            object.__setattr__(self, "shards", (only,))
            return
        shards = tuple(
            Shard(
                index,
                tag,
                f"{self.stream}:{{{tag}}}",
                f"{self.dead_letter}:{{{tag}}}",
                self.prefix,
            )
            for index, tag in enumerate(spread_tags(self.stream_shards))
        )
        object.__setattr__(self, "shards", shards)

    def shard_of_source(self, source: str) -> Shard:
        """The shard a device's events go to (and, on a cluster, its series' slot)."""
        shards = self.shards
        return shards[0] if len(shards) == 1 else shards[stable_hash(source) % len(shards)]

    def shard_of_client(self, client_id: str) -> Shard:
        """The shard of a request guarded by an idempotency key or a rate limit: one place per
        client, so its records and its budget stay exact."""
        shards = self.shards
        return shards[0] if len(shards) == 1 else shards[stable_hash(client_id) % len(shards)]

    @property
    def layout(self) -> str:
        """Where the shard layout in use is recorded (checked at start: it cannot change)."""
        return f"{self.prefix}layout"

    @property
    def workers(self) -> str:
        """The live workers (a sorted set of heartbeats) that share the shards."""
        return f"{self.prefix}workers"

    def outside_prefix(self) -> list[str]:
        """Configured key names that do not start with :attr:`prefix` (an ACL on the prefix
        would not cover them)."""
        named = (self.stream, self.dead_letter, self.metrics, self.series_prefix)
        return [name for name in named if not name.startswith(self.prefix)]

    # The cardinality registry (ingest_producer.cardinality): sets of the device series and
    # metric names admitted so far. One hash tag for all of them, the metrics set's, so one
    # call checks every cap atomically, and seeding copies that set within one slot.
    def _registry(self, name: str) -> str:
        return f"{self.prefix}registry:{{{hash_tag(self.metrics)}}}:{name}"

    @property
    def registry_series(self) -> str:
        """Every device series admitted (members are their :meth:`source_raw` keys)."""
        return self._registry("series")

    @property
    def registry_metrics(self) -> str:
        """Every metric name admitted."""
        return self._registry("metrics")

    def registry_client_series(self, client_id: str) -> str:
        """The device series one write key created (for INGEST_MAX_SERIES_PER_KEY)."""
        return self._registry(f"client:{client_id}")

    @property
    def registry_seeded(self) -> str:
        """Set once the registry holds the series that existed before it (see seeding)."""
        return self._registry("seeded")

    def read_cache(self, route: str, digest: str) -> str:
        """One read answer shared by every producer process for a moment (a string with a
        PX expiry); ``digest`` hashes everything that changes the answer."""
        return f"{self.prefix}read-cache:{route}:{digest}"

    @property
    def timeseries_probe(self) -> str:
        """A key that never exists, for probing that the TimeSeries commands are there."""
        return f"{self.prefix}probe:timeseries"

    @property
    def legacy(self) -> bool:
        """One stream on one node: every key keeps the name of the releases before sharding."""
        return self.stream_shards == 1 and not self.cluster

    @property
    def partial_rollups(self) -> tuple[Rollup, ...]:
        """The rollups of every per-metric partial (:func:`partial_rollups`)."""
        return partial_rollups(self.rollups)

    def raw(self, metric: str) -> str:
        """The tutorial's per-metric raw series name (all sources together): since sharding,
        the partial of the only shard of the unsharded layout, and where earlier releases kept
        a metric's samples."""
        return f"{self.series_prefix}:{{{metric}}}:raw"

    def _metric_part(self, metric: str, shard: Shard) -> str:
        if self.legacy:
            return f"{self.series_prefix}:{{{metric}}}"
        return f"{self.series_prefix}:{{{shard.tag}}}:{metric}"

    def metric_raw(self, metric: str, shard: Shard) -> str:
        """``shard``'s partial of the per-metric series: written by the shard's owner only,
        in the shard's slot (so a shard's batch is one TS.MADD on a cluster)."""
        return f"{self._metric_part(metric, shard)}:raw"

    def metric_rollup_of(self, metric: str, shard: Shard, rollup: Rollup) -> str:
        """The series of ``rollup`` (one of :attr:`partial_rollups`) of a partial."""
        return f"{self._metric_part(metric, shard)}:{rollup.name}"

    def _device(self, metric: str, source: str) -> str:
        """The per-device part of a series key: ``{metric|source}`` (a slot per device), or on a
        cluster ``{<shard tag>}:metric|source`` (a slot per shard). ``source`` may be a
        :func:`series_identity` (``source|<labels digest>``): the shard is its source's."""
        if self.cluster:
            tag = self.shard_of_source(identity_source(source)).tag
            return f"{{{tag}}}:{metric}|{source}"
        return f"{{{metric}|{source}}}"

    def source_raw(self, metric: str, source: str) -> str:
        """The per-(metric, source) raw series: no two devices overwrite each other. With
        labels, ``source`` is the :func:`series_identity`: one series per label set."""
        return f"{self.series_prefix}:{self._device(metric, source)}:raw"

    def source_rollup(self, metric: str, source: str) -> str:
        """The first rollup of :meth:`source_raw`."""
        return self.source_rollup_of(metric, source, self.rollups[0])

    def source_rollup_of(self, metric: str, source: str, rollup: Rollup) -> str:
        """The series of ``rollup`` of :meth:`source_raw` (same hash tag)."""
        return f"{self.series_prefix}:{self._device(metric, source)}:{rollup.name}"

    # Keys the append function touches share the stream's slot (one FCALL, no CROSSSLOT).
    def idempotency(self, digest: str) -> str:
        """The first shard's :meth:`Shard.idempotency` (one shard: the only one)."""
        return self.shards[0].idempotency(digest)

    def rate_limit(self, client_id: str) -> str:
        """The first shard's :meth:`Shard.rate_limit` (one shard: the only one)."""
        return self.shards[0].rate_limit(client_id)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes for ``key``: the text of its first non-empty ``{...}``, else
    the whole key. A key tagged ``{<hash_tag(k)>}`` lives in the same slot as ``k``."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
