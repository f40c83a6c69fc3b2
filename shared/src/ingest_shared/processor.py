"""The batch processor: stream entries in, samples stored, failures dead-lettered, then one XACK.

Used by the worker daemon and by the producer's ``/api/ingest/workers/process`` route, so both
behave the same. Delivery is at least once; every write here is idempotent (series use
DUPLICATE_POLICY LAST), so processing an entry twice stores it once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from ingest_shared import keys as k
from ingest_shared.exceptions import InvalidEventError, TransientStoreError
from ingest_shared.messages import field_first
from ingest_shared.redis_client import call_packed, pack
from ingest_shared.schema import Base, Sample, TimeWindow, now_ms, sample_from_entry
from ingest_shared.streams import append_dead_letters, dead_letter_fields, is_transient
from ingest_shared.timeseries import (
    SeriesLayout,
    ensure_series,
    is_retryable,
    madd_command,
    madd_commands_by_slot,
    packed_pair,
    series_pair,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ingest_shared.keys import Keys, Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_shared.streams import Entry
    from ingest_shared.timeseries import KnownSeries, MetricElements

# Remembered (metric, source) pairs whose series exist; past this many, start again (a cache
# miss costs one idempotent setup round trip, never correctness).
_KNOWN_SERIES_LIMIT = 200_000

Failure = tuple[bytes, str, "dict[bytes, bytes] | None"]

# The classes a dead letter is counted under (BatchResult.reasons, the worker's metrics).
INVALID = "invalid"
REJECTED = "rejected"
OVERSIZED = "oversized"
MAX_DELIVERIES = "max_deliveries"
DEAD_LETTER_REASONS = (INVALID, REJECTED, OVERSIZED, MAX_DELIVERIES)


def _labels_of(samples: Sequence[Sample]) -> dict[str, dict[str, str]] | None:
    """The labels of each series identity in ``samples`` (None when no sample has any)."""
    found = {s.source: s.labels for s in samples if s.labels is not None}
    return found or None


class BatchResult(Base, omit_defaults=True):
    """What one batch did; the process route returns it as JSON. ``reasons`` counts the dead
    letters by class: invalid, rejected (by TimeSeries), oversized, max_deliveries."""

    read: int
    processed: int
    dead_lettered: int
    acked: int
    reasons: dict[str, int] = msgspec.field(default_factory=dict)


class PreparedBatch(Base):
    """A batch decoded and validated, not yet stored: :meth:`BatchProcessor.store` writes
    ``samples`` (``stored_ids[i]`` is the entry of ``samples[i]``), dead-letters ``failures``,
    then acks ``ids``. ``entries`` holds every entry a failure may need the fields of."""

    entries: Sequence[Entry]
    now: int
    read: int = 0
    ids: list[bytes] = msgspec.field(default_factory=list)
    stored_ids: list[bytes] = msgspec.field(default_factory=list)
    samples: list[Sample] = msgspec.field(default_factory=list)
    failures: list[Failure] = msgspec.field(default_factory=list)
    reasons: dict[str, int] = msgspec.field(default_factory=dict)


def _oversized_reason(fields: Mapping[bytes, bytes]) -> str:
    size = fields.get(k.FIELD_OVERSIZED, b"?").decode(errors="replace")
    return (
        f"entry of {size} bytes is larger than INGEST_MAX_ENTRY_BYTES: not decoded; the "
        "payload holds its first bytes only"
    )


def create_processor(
    redis: RedisClient,
    settings: Settings,
    shard: Shard | None = None,
    *,
    collapse_duplicates: bool = True,
) -> BatchProcessor:
    """The batch processor ``settings`` describe for ``shard`` (default: the first), writing
    through ``redis`` (``collapse_duplicates``: see :class:`BatchProcessor`)."""
    layout = SeriesLayout(
        retention_ms=settings.retention_ms, rollup_retention_ms=settings.rollup_retention_ms
    )
    window = TimeWindow(
        max_clock_skew_ms=settings.max_clock_skew_ms, retention_ms=settings.retention_ms
    )
    return BatchProcessor(
        redis,
        settings.keys,
        settings.consumer_group,
        layout,
        window,
        dead_letter_maxlen=settings.dead_letter_maxlen,
        shard=shard,
        collapse_duplicates=collapse_duplicates,
    )


class BatchProcessor:
    """Validates, stores, dead-letters and acknowledges batches of stream entries."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        group: str,
        layout: SeriesLayout,
        window: TimeWindow,
        *,
        dead_letter_maxlen: int = 100_000,
        collapse_duplicates: bool = True,
        shard: Shard | None = None,
    ) -> None:
        """``collapse_duplicates=False`` writes one per-metric sample per entry even when a
        batch holds several for one (metric, timestamp): same result, slower (for comparison)."""
        self._redis = redis
        self._dead_letter_maxlen = dead_letter_maxlen
        self._collapse = collapse_duplicates
        self._keys = keys
        self._group = group.encode()
        self._shard = shard or keys.shards[0]
        self._stream = self._shard.stream.encode()
        self._layout = layout
        self._window = window
        # (metric, source) pairs whose series exist, with their raw series keys packed for RESP.
        # Nested by metric, then source: str keys hash once, a (metric, source) tuple per sample
        # would be built and hashed on every lookup.
        self._known: KnownSeries = {}
        self._slots: dict[bytes, int] = {}  # cluster: the slot of each packed series key

    async def process(
        self, entries: Sequence[Entry], consumer: str, forced: Mapping[bytes, str] | None = None
    ) -> BatchResult:
        """Store or dead-letter each of ``entries`` read by ``consumer``, then ack them all.

        ``forced`` maps entry ids to a reason to dead-letter them without trying (for example
        ``max deliveries exceeded``). Raises TransientStoreError, having acked nothing, when
        Redis could not do its part; the entries stay pending and the call can be repeated.
        """
        return await self.store(self.prepare(entries, forced), consumer)

    def prepare(
        self, entries: Sequence[Entry], forced: Mapping[bytes, str] | None = None
    ) -> PreparedBatch:
        """Decode and validate ``entries`` (no Redis call): what :meth:`store` writes and acks."""
        forced = forced or {}
        now = now_ms()
        batch = PreparedBatch(entries=entries, now=now)
        ids = batch.ids
        # Parallel lists, entry ids and their samples: TS.MADD takes the samples as they are.
        stored_ids = batch.stored_ids
        samples = batch.samples
        window = self._window
        failures = batch.failures
        reasons = batch.reasons
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:
                # Deleted while pending (redis-py reads the nil as {}; XADD needs one field):
                # nothing left to store or to dead-letter, only the ack.
                continue
            reason = forced.get(entry_id)
            if reason is not None:
                failures.append((entry_id, reason, fields))
                reasons[MAX_DELIVERIES] = reasons.get(MAX_DELIVERIES, 0) + 1
                continue
            if k.FIELD_OVERSIZED in fields:
                failures.append((entry_id, _oversized_reason(fields), fields))
                reasons[OVERSIZED] = reasons.get(OVERSIZED, 0) + 1
                continue
            try:
                samples.append(sample_from_entry(entry_id, fields, window, now))
            except InvalidEventError as exc:
                failures.append((entry_id, field_first(exc.reason, exc.field), fields))
                reasons[INVALID] = reasons.get(INVALID, 0) + 1
            else:
                stored_ids.append(entry_id)
        batch.read = len(entries)
        return batch

    async def store(self, batch: PreparedBatch, consumer: str) -> BatchResult:
        """Write ``batch``'s samples, dead-letter its failures, then ack its ids.

        Raises TransientStoreError, having acked nothing, when Redis could not do its part; the
        same batch can then be stored again.
        """
        try:
            return await self._store_batch(batch, consumer)
        except (RedisError, OSError) as exc:
            # RedisError, not only ResponseError: redis-py's ConnectionError/TimeoutError
            # derive from RedisError alone and are the commonest transient failures.
            if is_transient(exc):
                raise TransientStoreError(str(exc)) from exc
            raise

    async def _store_batch(self, batch: PreparedBatch, consumer: str) -> BatchResult:
        samples = batch.samples
        # Copies: a transient error makes the caller store the same batch again.
        failures = list(batch.failures)
        reasons = dict(batch.reasons)
        rejected: dict[bytes, str] = {}
        if samples:
            rejected = await self._store(batch.stored_ids, samples)
            if rejected:
                by_id = dict(batch.entries)
                failures += [(eid, why, by_id.get(eid)) for eid, why in rejected.items()]
                reasons[REJECTED] = len(rejected)
        if failures:
            await self._dead_letter(failures, consumer, batch.now)
        acked = await self._ack(batch.ids) if batch.ids else 0
        return BatchResult(
            read=batch.read,
            processed=len(samples) - len(rejected),
            dead_lettered=len(failures),
            acked=acked,
            reasons=reasons,
        )

    async def _store(self, ids: list[bytes], samples: list[Sample]) -> dict[bytes, str]:
        """Write every sample (TS.MADD, one round trip); return rejected entry ids and why.

        ``ids[i]`` is the entry of ``samples[i]``.
        """
        known = self._known
        try:
            results, elements = await self._madd(samples)
        except KeyError:  # a pair seen for the first time (or since the cache was reset)
            await self._set_up_series(samples)
            results, elements = await self._madd(samples)
        if all(type(r) is int for r in results):
            return {}
        # Per-device results first, one per sample; then one per per-metric element, which
        # stands for every sample of its (metric, timestamp).
        count = len(samples)
        per_metric = {element: results[count + j] for j, element in enumerate(elements)}
        rejected: dict[bytes, str] = {}
        retry: list[tuple[bytes, Sample]] = []
        for index, (entry_id, sample) in enumerate(zip(ids, samples, strict=True)):
            raw = known[sample.metric][sample.source][0]
            outcomes = (results[index], per_metric[raw, sample.timestamp_ms])
            errors = [r for r in outcomes if isinstance(r, ResponseError)]
            if not errors:
                continue
            if all(is_retryable(e) for e in errors):
                retry.append((entry_id, sample))
            else:
                rejected[entry_id] = str(errors[0])
        if retry:
            rejected |= await self._store_one_by_one(retry)
        return rejected

    async def _madd(self, samples: list[Sample]) -> tuple[list[Any], MetricElements]:
        """TS.MADD of every sample (KeyError for an unknown pair); the results in
        madd_command's layout. On a cluster, one command per slot, all at once."""
        if not self._keys.cluster:
            command, elements = madd_command(samples, self._known, collapse=self._collapse)
            return await call_packed(self._redis, command), elements
        commands, elements = madd_commands_by_slot(
            samples, self._known, self._slots, collapse=self._collapse
        )
        replies = await asyncio.gather(
            *(call_packed(self._redis, command, key) for key, command, _ in commands)
        )
        results: list[Any] = [None] * (len(samples) + len(elements))
        for (_, _, positions), reply in zip(commands, replies, strict=True):
            for position, result in zip(positions, reply, strict=True):
                results[position] = result
        return results, elements

    async def _set_up_series(self, samples: list[Sample]) -> None:
        """Create the series of every pair in ``samples`` not known yet, and remember them."""
        known = self._known
        new = {(s.metric, s.source) for s in samples if s.source not in known.get(s.metric, ())}
        if sum(map(len, known.values())) + len(new) > _KNOWN_SERIES_LIMIT:
            # Start again; this batch's pairs go through the (idempotent) setup once more.
            known.clear()
            self._slots.clear()
            new = {(s.metric, s.source) for s in samples}
        await ensure_series(
            self._redis, self._keys, self._layout, new, self._shard, labels=_labels_of(samples)
        )
        self._remember(new)

    def _remember(self, pairs: set[tuple[str, str]]) -> None:
        keys, shard = self._keys, self._shard
        for metric, source in pairs:
            self._known.setdefault(metric, {})[source] = packed_pair(keys, metric, source, shard)

    async def _store_one_by_one(self, samples: list[tuple[bytes, Sample]]) -> dict[bytes, str]:
        """Slow path: recreate missing series, then TS.ADD ... ON_DUPLICATE LAST each sample."""
        pairs = {(s.metric, s.source) for _, s in samples}
        for pair in pairs:
            self._known.get(pair[0], {}).pop(pair[1], None)
        labels = _labels_of([s for _, s in samples])
        await ensure_series(
            self._redis, self._keys, self._layout, pairs, self._shard, labels=labels
        )
        self._remember(pairs)
        pipe = self._redis.pipeline(transaction=False)
        for _, (metric, source, ts, value, _labels) in samples:
            for key in series_pair(self._keys, metric, source, self._shard):
                pipe.execute_command("TS.ADD", key, ts, value, "ON_DUPLICATE", "LAST")
        results = await pipe.execute(raise_on_error=False)
        rejected: dict[bytes, str] = {}
        for index, (entry_id, _) in enumerate(samples):
            for result in results[2 * index : 2 * index + 2]:
                if isinstance(result, ResponseError):
                    if is_transient(result):
                        raise result
                    rejected[entry_id] = str(result)
        return rejected

    async def _dead_letter(self, failures: list[Failure], consumer: str, now: int) -> None:
        """Append one dead-letter entry per failure; raise unless every append succeeded."""
        letters = [
            dead_letter_fields(entry_id, reason, fields, consumer, now)
            for entry_id, reason, fields in failures
        ]
        # Raises on the first error: then nothing is acked and the batch is retried.
        await append_dead_letters(
            self._redis, self._shard.dead_letter, letters, self._dead_letter_maxlen
        )

    async def _ack(self, ids: list[bytes]) -> int:
        command = pack(b"XACK", self._stream, self._group, *ids)
        return int(await call_packed(self._redis, command, self._stream))
