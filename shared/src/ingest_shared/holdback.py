"""Holding each metric's newest milliseconds back to the worker's next batch.

Stream order and time order differ by a millisecond or two, and a batch boundary usually falls
inside a millisecond: so the next batch would hold samples for a (metric, timestamp) the last
one just wrote, or an older one. Redis takes such a sample as an upsert, and on a series with a
compaction rule an upsert recomputes the open rollup bucket from its raw samples: a cost that
grows with the bucket (measured: ~20 us at the start of a 60 s bucket, ~430 us near its end
with 1,000 samples/s; an in-order sample costs under 1 us). Per metric, the samples of the last
``window_ms`` + 1 milliseconds of a batch are therefore written with the next batch, merged with
the rest of their milliseconds, instead of twice.

Held entries are neither written nor acked, so they stay pending: a crash leaves them to the
usual re-read and reclaim, nothing is lost. An entry is held at most once (the next batch writes
it whatever arrives), and a worker writes what it holds as soon as a read finds nothing new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ingest_shared.processor import PreparedBatch
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from ingest_shared.schema import Sample
    from ingest_shared.streams import Entry

# Samples within this many ms of their metric's newest wait for the next batch: the producer's
# concurrent requests reach the stream at most a millisecond or two out of time order.
HOLD_BACK_MS = 1


class Held(Base):
    """Entries a batch left to the next one: their ids (parallel to ``samples``)."""

    entries: list[Entry] = msgspec.field(default_factory=list)
    ids: list[bytes] = msgspec.field(default_factory=list)
    samples: list[Sample] = msgspec.field(default_factory=list)


def hold_back(
    batch: PreparedBatch, held: Held, window_ms: int = HOLD_BACK_MS
) -> tuple[PreparedBatch, Held]:
    """``held`` (the last batch's) and ``batch`` as one batch to store now, and what to hold.

    Per metric, samples newer than a cut are held: the cut is ``window_ms`` + 1 ms below the
    metric's newest timestamp, raised to the newest timestamp among ``held``'s samples (those
    are written now, and with them everything up to their time). So each device series gets
    its samples in order, and no (metric, timestamp) is split between two batches.
    """
    samples = held.samples + batch.samples
    stored_ids = held.ids + batch.stored_ids
    cut: dict[str, int] = {}
    for metric, _, ts, _, _ in samples:
        if ts > cut.get(metric, -1):
            cut[metric] = ts
    for metric in cut:
        cut[metric] -= window_ms + 1
    for metric, _, ts, _, _ in held.samples:
        cut[metric] = max(cut[metric], ts)
    now_ids: list[bytes] = []
    now_samples: list[Sample] = []
    later = Held()
    for entry_id, sample in zip(stored_ids, samples, strict=True):
        if sample[2] > cut[sample[0]]:
            later.ids.append(entry_id)
            later.samples.append(sample)
        else:
            now_ids.append(entry_id)
            now_samples.append(sample)
    entries = [*held.entries, *batch.entries] if held.entries else batch.entries
    if later.ids:
        waiting = set(later.ids)
        later.entries = [entry for entry in batch.entries if entry[0] in waiting]
        acks = held.ids + [entry_id for entry_id in batch.ids if entry_id not in waiting]
    else:
        acks = held.ids + batch.ids
    merged = PreparedBatch(
        entries=entries,
        now=batch.now,
        read=batch.read,
        ids=acks,
        stored_ids=now_ids,
        samples=now_samples,
        failures=batch.failures,
        reasons=batch.reasons,
    )
    return merged, later


def release(held: Held, now: int) -> PreparedBatch:
    """Everything ``held`` as a batch of its own (the stream had nothing newer)."""
    return PreparedBatch(
        entries=held.entries,
        now=now,
        ids=list(held.ids),
        stored_ids=list(held.ids),
        samples=list(held.samples),
    )
