"""Holding each metric's newest milliseconds back to the next batch (ingest_shared.holdback)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_shared.holdback import HOLD_BACK_MS, Held, hold_back, release
from ingest_shared.processor import PreparedBatch
from ingest_shared.schema import Sample

METRICS = ("cpu", "mem", "temp")
SOURCES = ("gw-1", "gw-2", "dev-a")
BASE_MS = 1_800_000_000_000


def prepared(entries: list[tuple[bytes, Sample]]) -> PreparedBatch:
    """What BatchProcessor.prepare makes of valid entries."""
    batch = PreparedBatch(entries=[(eid, {b"x": b"1"}) for eid, _ in entries], now=BASE_MS)
    for eid, sample in entries:
        batch.ids.append(eid)
        batch.stored_ids.append(eid)
        batch.samples.append(sample)
    batch.read = len(entries)
    return batch


def run(batches: list[list[tuple[bytes, Sample]]]) -> list[PreparedBatch]:
    """The batches a worker stores for ``batches`` read in turn, then the final release."""
    held = Held()
    stored = []
    for entries in batches:
        batch, held = hold_back(prepared(entries), held)
        stored.append(batch)
    stored.append(release(held, BASE_MS))
    return stored


@st.composite
def stream(draw: st.DrawFn) -> list[list[tuple[bytes, Sample]]]:
    """Gateway-shaped traffic: requests of one millisecond each, reaching the stream up to 2 ms
    out of time order, cut into batches anywhere."""
    samples: list[tuple[bytes, Sample]] = []
    clock = BASE_MS
    for request in range(draw(st.integers(1, 40))):
        clock += draw(st.sampled_from((0, 0, 1, 1, 2, 5)))
        at = clock - draw(st.sampled_from((0, 0, 0, 1, 2)))
        for n in range(draw(st.integers(1, 8))):
            metric = draw(st.sampled_from(METRICS))
            source = draw(st.sampled_from(SOURCES))
            value = float(draw(st.integers(-1000, 1000)))
            eid = b"%d-%d" % (BASE_MS + request, n)
            samples.append((eid, Sample(metric, source, at, value)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(samples) - 1)), max_size=12)))
    bounds = [0, *cuts, len(samples)]
    return [samples[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=300, deadline=None)
@given(stream())
def test_every_entry_is_written_and_acked_once_at_most_one_batch_late(
    batches: list[list[tuple[bytes, Sample]]],
) -> None:
    stored = run(batches)
    read_in = {eid: i for i, entries in enumerate(batches) for eid, _ in entries}
    written = [(i, eid) for i, batch in enumerate(stored) for eid in batch.stored_ids]
    acked = [(i, eid) for i, batch in enumerate(stored) for eid in batch.ids]
    assert sorted(eid for _, eid in written) == sorted(read_in)
    assert sorted(eid for _, eid in acked) == sorted(read_in)
    for i, eid in written:
        assert read_in[eid] <= i <= read_in[eid] + 1
    # An entry is acked in the batch that writes it, never before.
    assert sorted(written) == sorted(acked)
    samples = {eid: s for entries in batches for eid, s in entries}
    for batch in stored:
        assert batch.samples == [samples[eid] for eid in batch.stored_ids]


def last_values(order: list[Sample]) -> dict[tuple[str, int], float]:
    """What a per-metric series with DUPLICATE_POLICY LAST keeps after these writes."""
    kept: dict[tuple[str, int], float] = {}
    for metric, _, ts, value, _ in order:
        kept[metric, ts] = value
    return kept


@settings(max_examples=300, deadline=None)
@given(stream())
def test_series_keep_the_same_values_as_without_holding_back(
    batches: list[list[tuple[bytes, Sample]]],
) -> None:
    in_stream_order = [s for entries in batches for _, s in entries]
    written = [s for batch in run(batches) for s in batch.samples]
    assert last_values(written) == last_values(in_stream_order)
    devices: dict[tuple[str, str, int], float] = {}
    for metric, source, ts, value, _ in in_stream_order:
        devices[metric, source, ts] = value
    assert {(m, s, t): v for m, s, t, v, _ in written} == devices


def upserts(batches: list[list[Sample]]) -> int:
    """Per-metric samples at or before their series' newest when their batch is written (each
    batch's per-metric samples go in time order, collapsed per timestamp)."""
    newest: dict[str, int] = {}
    count = 0
    for batch in batches:
        for metric, ts in sorted({(s[0], s[2]) for s in batch}, key=lambda pair: pair[1]):
            if ts <= newest.get(metric, -1):
                count += 1
            else:
                newest[metric] = ts
    return count


def test_gateway_traffic_causes_few_upserts_where_plain_batches_cause_many() -> None:
    # Two requests of 10 events per millisecond (5 per metric each); batches of 37 entries
    # (about two milliseconds) cut inside milliseconds; one request in four reaches the stream
    # 1 ms late.
    samples: list[tuple[bytes, Sample]] = []
    for request in range(200):
        at = BASE_MS + request // 2 - (1 if request % 4 == 3 else 0)
        for n in range(10):
            sample = Sample(METRICS[n % 2], f"dev-{n}", at, float(request))
            samples.append((b"%d-%d" % (request, n), sample))
    batches = [samples[i : i + 37] for i in range(0, len(samples), 37)]
    plain = upserts([[s for _, s in entries] for entries in batches])
    held = upserts([batch.samples for batch in run(batches)])
    assert plain > 50
    # Left: a millisecond spread over three batches (an entry is held once only).
    assert held * 10 < plain


def test_a_batch_of_one_millisecond_is_held_whole_then_released() -> None:
    entries = [(b"1-%d" % n, Sample("cpu", f"dev-{n}", BASE_MS, 1.0)) for n in range(3)]
    batch, held = hold_back(prepared(entries), Held())
    assert (batch.ids, batch.samples) == ([], [])
    assert held.ids == [eid for eid, _ in entries]
    out = release(held, BASE_MS)
    assert out.ids == out.stored_ids == held.ids
    assert out.read == 0


def test_held_samples_are_written_with_the_next_batch_whatever_it_holds() -> None:
    first = [(b"1-0", Sample("cpu", "a", BASE_MS + 10, 1.0))]
    _, held = hold_back(prepared(first), Held())
    # The next batch is all newer: the held sample goes now, its successor waits in turn.
    second = [(b"2-0", Sample("cpu", "a", BASE_MS + 10 + HOLD_BACK_MS + 5, 2.0))]
    batch, held = hold_back(prepared(second), held)
    assert batch.stored_ids == [b"1-0"]
    assert batch.ids == [b"1-0"]
    assert held.ids == [b"2-0"]
