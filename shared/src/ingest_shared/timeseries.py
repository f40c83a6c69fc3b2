"""RedisTimeSeries layout: which series exist for a (metric, source), and how samples are written.

Every reading goes to two raw series in the same command: its shard's partial of the per-metric
series and a per-(metric, source) series (``ingest_shared.keys``). A device's raw series has
one rollup series per configured rollup (``Keys.rollups``, INGEST_ROLLUPS), a partial one per
part those merge from (``Keys.partial_rollups``), each fed by a TS.CREATERULE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from redis.crc import key_slot
from redis.exceptions import NoPermissionError, ResponseError

from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.redis_client import bulk, call
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ingest_shared.keys import Keys, Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.schema import Sample

# The exact errors that mean "already set up"; anything else from setup is a real failure.
SERIES_EXISTS = "TSDB: key already exists"
RULE_EXISTS = "TSDB: the destination key already has a src rule"
# Per-sample errors a retry with TS.ADD ... ON_DUPLICATE LAST can fix: a series created with
# the default BLOCK policy by someone else, or a series deleted under a running worker.
RETRYABLE_SAMPLE_ERRORS = ("DUPLICATE_POLICY is set to BLOCK", "the key is not a TSDB key")

# The per-metric partial and per-(metric, source) raw series keys of one reading, as bytes.
SeriesPair: TypeAlias = tuple[bytes, bytes]
# The same two keys, each already packed as a RESP bulk string (``$<len>\r\n<key>\r\n``).
PackedPair: TypeAlias = tuple[bytes, bytes]
# The pairs whose series exist: metric -> source -> their packed raw series keys.
KnownSeries: TypeAlias = dict[str, dict[str, PackedPair]]


class SeriesLayout(Base):
    """Retention settings applied when a series is first created (the rollups: ``Keys``)."""

    retention_ms: int
    rollup_retention_ms: int


def _create_args(key: str, retention_ms: int, labels: Sequence[str]) -> list[str | int]:
    return [
        "TS.CREATE",
        key,
        "RETENTION",
        retention_ms,
        "DUPLICATE_POLICY",
        "LAST",
        "LABELS",
        *labels,
    ]


def setup_commands(
    keys: Keys,
    layout: SeriesLayout,
    metric: str,
    source: str | None,
    shard: Shard,
    *,
    labels: Mapping[str, str] | None = None,
) -> list[list[str | int]]:
    """TS.CREATE raw, then TS.CREATE + TS.CREATERULE per rollup: for ``shard``'s partial of a
    metric (source None) or a pair (``source`` a series identity when the event has
    ``labels``, which every series of the pair then carries). Rollups no longer configured are
    left alone; missing ones are added."""
    if source is None:
        raw = keys.metric_raw(metric, shard)
        name_labels = [k.LABEL_METRIC, metric, k.LABEL_SHARD, str(shard.index)]
        raw_kind, rollup_kind = k.KIND_RAW, k.KIND_ROLLUP
        rollups = keys.partial_rollups
    else:
        raw = keys.source_raw(metric, source)
        name_labels = [k.LABEL_METRIC, metric, k.LABEL_SOURCE, k.identity_source(source)]
        for name, value in (labels or {}).items():
            name_labels += (name, k.stored_label_value(value))
        raw_kind, rollup_kind = k.KIND_SOURCE_RAW, k.KIND_SOURCE_ROLLUP
        rollups = keys.rollups
    commands = [_create_args(raw, layout.retention_ms, [*name_labels, k.LABEL_KIND, raw_kind])]
    for rollup in rollups:
        if source is None:
            key = keys.metric_rollup_of(metric, shard, rollup)
        else:
            key = keys.source_rollup_of(metric, source, rollup)
        rollup_labels = [
            *name_labels,
            k.LABEL_KIND,
            rollup_kind,
            k.LABEL_AGG,
            rollup.agg,
            k.LABEL_BUCKET_MS,
            str(rollup.bucket_ms),
        ]
        commands.append(_create_args(key, layout.rollup_retention_ms, rollup_labels))
        commands.append(["TS.CREATERULE", raw, key, "AGGREGATION", rollup.agg, rollup.bucket_ms])
    return commands


async def ensure_series(
    redis: RedisClient,
    keys: Keys,
    layout: SeriesLayout,
    pairs: Iterable[tuple[str, str]],
    shard: Shard,
    *,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the series, rollups and rules for ``pairs`` (metric, source) read from
    ``shard``, with the shard's partial of each metric, in one round trip. ``labels`` maps a
    series identity (``keys.series_identity``) in ``pairs`` to its labels.

    Idempotent: tolerates exactly the two "already exists" errors; raises anything else.
    """
    pipe = redis.pipeline(transaction=False)
    metrics: set[str] = set()
    for metric, source in pairs:
        if metric not in metrics:
            metrics.add(metric)
            for args in setup_commands(keys, layout, metric, None, shard):
                pipe.execute_command(*args)
        found = None if labels is None else labels.get(source)
        for args in setup_commands(keys, layout, metric, source, shard, labels=found):
            pipe.execute_command(*args)
    if not metrics:
        return
    pipe.sadd(keys.metrics, *metrics)
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, ResponseError) and str(result) not in (SERIES_EXISTS, RULE_EXISTS):
            raise result


def series_pair(keys: Keys, metric: str, source: str, shard: Shard) -> SeriesPair:
    """The two raw series keys one reading of ``shard`` is written to, encoded for the wire."""
    return keys.metric_raw(metric, shard).encode(), keys.source_raw(metric, source).encode()


def packed_pair(keys: Keys, metric: str, source: str, shard: Shard) -> PackedPair:
    """The two raw series keys of a reading as :func:`madd_command` writes them."""
    raw, source_raw = series_pair(keys, metric, source, shard)
    return bulk(raw), bulk(source_raw)


# What a TS.MADD built by :func:`madd_command` wrote to the per-metric series, in order after
# the per-device elements: (packed per-metric key, timestamp) per element.
MetricElements: TypeAlias = list[tuple[bytes, int]]


def madd_command(
    samples: Sequence[Sample], known: KnownSeries, *, collapse: bool = True
) -> tuple[bytes, MetricElements]:
    """One TS.MADD writing each sample (metric, source, ts, value) to its two series, as RESP
    bytes.

    The per-device elements come first, one per sample, in order. Then the per-metric ones, in
    time order (:func:`in_time_order`): with ``collapse``, one per (metric, timestamp), holding
    the batch's last value for it: what ``DUPLICATE_POLICY LAST`` would keep anyway, without
    making Redis upsert a timestamp it just wrote (its slow path on a series with rules:
    gateways send many events of one metric in the same millisecond). Without it, one per
    sample (for comparisons).

    Built here rather than by redis-py: its ``pack_command`` re-joins a growing buffer per
    argument and was the worker's largest cost for a 3,000-argument TS.MADD (py-spy). Every
    (metric, source) must be in ``known`` (KeyError otherwise). Send it with ``call_packed``.
    """
    parts = [b""]
    per_metric: dict[tuple[bytes, int], bytes] = {}
    uncollapsed: list[bytes] = []
    elements: MetricElements = []
    for metric, source, ts, value, _ in samples:
        raw, source_raw = known[metric][source]
        stamp = b"%d" % ts
        number = b"%r" % value  # repr, what redis-py itself sends for a float
        point = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(stamp), stamp, len(number), number)
        parts += (source_raw, point)
        if collapse:
            per_metric[raw, ts] = point  # a repeat keeps its first place, takes the last value
        else:
            elements.append((raw, ts))
            uncollapsed += (raw, point)
    if collapse:
        ordered = in_time_order(per_metric)
        for (raw, _), point in ordered:
            parts += (raw, point)
        elements = [element for element, _ in ordered]
    else:
        parts += uncollapsed
    parts[0] = b"*%d\r\n$7\r\nTS.MADD\r\n" % (3 * (len(samples) + len(elements)) + 1)
    return b"".join(parts), elements


# One TS.MADD of a cluster batch: a key of its slot (for routing), the command, and where each
# of its elements' results goes in madd_command's layout (devices first, then metrics).
SlotCommand: TypeAlias = tuple[bytes, bytes, list[int]]


def madd_commands_by_slot(
    samples: Sequence[Sample],
    known: KnownSeries,
    slots: dict[bytes, int],
    *,
    collapse: bool = True,
) -> tuple[list[SlotCommand], MetricElements]:
    """:func:`madd_command` for Redis Cluster: one TS.MADD per slot (a TS.MADD spanning two
    slots is refused even when one node holds both). With shard-tagged device series, a shard's
    batch needs one command for its devices and one per distinct metric.

    ``slots`` caches the slot of each packed key (the caller bounds it with ``known``).
    """
    groups: dict[int, tuple[list[bytes], list[int], bytes]] = {}

    def add(packed: bytes, point: bytes, position: int) -> None:
        slot = slots.get(packed)
        if slot is None:
            slot = slots[packed] = key_slot(_unpacked(packed))
        group = groups.get(slot)
        if group is None:
            group = groups[slot] = ([], [], _unpacked(packed))
        group[0].extend((packed, point))
        group[1].append(position)

    per_metric: dict[tuple[bytes, int], bytes] = {}
    uncollapsed: list[tuple[tuple[bytes, int], bytes]] = []
    for position, (metric, source, ts, value, _) in enumerate(samples):
        raw, source_raw = known[metric][source]
        stamp = b"%d" % ts
        number = b"%r" % value
        point = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(stamp), stamp, len(number), number)
        add(source_raw, point, position)
        if collapse:
            per_metric[raw, ts] = point  # a repeat keeps its first place, takes the last value
        else:
            uncollapsed.append(((raw, ts), point))
    metric_elements = in_time_order(per_metric) if collapse else uncollapsed
    offset = len(samples)
    for index, ((raw, _), point) in enumerate(metric_elements):
        add(raw, point, offset + index)
    elements: MetricElements = [element for element, _ in metric_elements]
    commands = [
        (key, b"*%d\r\n$7\r\nTS.MADD\r\n" % (3 * len(positions) + 1) + b"".join(parts), positions)
        for parts, positions, key in groups.values()
    ]
    return commands, elements


def in_time_order(
    per_metric: dict[tuple[bytes, int], bytes],
) -> list[tuple[tuple[bytes, int], bytes]]:
    """The per-metric elements sorted by timestamp (stable: equal keys cannot occur here).

    A sample older than the newest one of its series is an upsert, and on a series with a
    compaction rule Redis then recomputes the rollup bucket it falls in from the raw samples:
    measured ~28 us of Redis CPU per late sample on a busy per-metric series vs ~0.5 us in
    order. Concurrent requests reach the stream a few milliseconds out of order, so a batch
    holds many such samples unless they are sorted; sorting leaves the series the same.
    """
    return sorted(per_metric.items(), key=_timestamp)


def _timestamp(element: tuple[tuple[bytes, int], bytes]) -> int:
    return element[0][1]


def _unpacked(packed: bytes) -> bytes:
    """The key inside a packed RESP bulk string ``$<len>\r\n<key>\r\n``."""
    return packed[packed.index(b"\r\n") + 2 : -2]


def is_retryable(error: ResponseError) -> bool:
    """True for a per-sample error that TS.ADD ... ON_DUPLICATE LAST after setup can fix."""
    text = str(error)
    return any(marker in text for marker in RETRYABLE_SAMPLE_ERRORS)


async def check_timeseries(redis: RedisClient, keys: Keys) -> None:
    """Raise ConfigurationError unless the server has the TimeSeries commands.

    Probes with TS.INFO on a key that does not exist: "key does not exist" proves the command is
    there, on Redis Stack, Redis 8 and managed services alike (MODULE LIST is often forbidden).
    """
    try:
        await call(redis, "TS.INFO", keys.timeseries_probe)
    except NoPermissionError as exc:
        msg = (
            f"Redis refused TS.INFO to this user ({exc}); the ACL must allow the TimeSeries "
            "commands this service uses (see docs/reliability-and-security.md, Least-privilege "
            "Redis users)"
        )
        raise ConfigurationError(msg) from None
    except ResponseError as exc:
        if "does not exist" in str(exc):
            return
        msg = f"Redis has no TimeSeries support ({exc}); use Redis 8, Redis Stack, or `make redis`"
        raise ConfigurationError(msg) from None
