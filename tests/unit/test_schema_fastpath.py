"""The worker's fast entry parser agrees with msgspec on every input, valid or not.

``sample_from_entry`` accepts the producer's own entries without msgspec; anything else goes
through msgspec. These tests generate entries (the producer's format, near misses and
garbage) and check that the result, or the error reason, is exactly msgspec's.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest_shared import keys
from ingest_shared import schema as sc
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.schema import Sample, TimeWindow, format_ms, sample_from_entry, to_epoch_ms

NOW = to_epoch_ms(dt.datetime(2026, 3, 19, 12, 0, tzinfo=dt.UTC))
WINDOW = TimeWindow(max_clock_skew_ms=300_000, retention_ms=86_400_000)
ENTRY_ID = b"%d-0" % (NOW - 1000)

METRIC_CHARS = "abcXYZ019_.-"
SOURCE_CHARS = METRIC_CHARS + ":@/"
NEAR_MISS_CHARS = SOURCE_CHARS + " \n{}|ü\x00"

names = st.one_of(
    st.text(METRIC_CHARS, min_size=1, max_size=8),
    st.text(SOURCE_CHARS, min_size=0, max_size=130),
    st.text(NEAR_MISS_CHARS, max_size=10),
    st.text(max_size=5),
).map(str.encode) | st.binary(max_size=6)

values = st.one_of(
    st.floats().map(lambda f: repr(f).encode()),
    st.integers().map(lambda i: str(i).encode()),
    st.from_regex(rb"\A-?[0-9]{1,25}(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?\Z"),
    st.text("0123456789.eE+-_ xn", max_size=12).map(str.encode),
    st.binary(max_size=6),
)

around_now = st.integers(NOW - WINDOW.retention_ms - 5000, NOW + WINDOW.max_clock_skew_ms + 5000)
in_window = st.integers(NOW - WINDOW.retention_ms, NOW + WINDOW.max_clock_skew_ms)


def _iso_variant(ms: int, variant: int) -> bytes:
    text = format_ms(ms)
    variants = [
        text,
        text.replace("Z", "+00:00"),
        text.lower(),
        text.replace("T", " "),
        text[:-1],
        text.replace("Z", ".5Z") if "." not in text else text.replace("Z", "1Z"),
    ]
    return variants[variant % len(variants)].encode()


stamps = st.one_of(
    around_now.map(lambda ms: format_ms(ms).encode()),
    st.builds(_iso_variant, around_now, st.integers(0, 10)),
    st.integers(-(10**13), 10**14).map(lambda ms: format_ms(ms).encode()),
    st.from_regex(rb"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3})?Z\Z"),
    st.binary(max_size=26),
)


label_names = st.one_of(st.sampled_from(["cpu", "host.name", "_x", "kind", "1a", ""]))
label_sets = st.one_of(
    st.dictionaries(label_names, st.text(max_size=4), max_size=3).map(sc._SORTED_ENCODER.encode),
    st.sampled_from([b"{}", b"[]", b"{", b'{"cpu":1}', b'{"a":"x","a":"y"}', b"null"]),
    st.binary(max_size=6),
)


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    fields = {
        keys.FIELD_METRIC: draw(names),
        keys.FIELD_SOURCE: draw(names),
        keys.FIELD_VALUE: draw(values),
        keys.FIELD_OCCURRED_AT: draw(stamps),
    }
    if draw(st.booleans()):
        fields[keys.FIELD_LABELS] = draw(label_sets)
    dropped = draw(st.sets(st.sampled_from(list(fields)), max_size=1))
    return {k: v for k, v in fields.items() if k not in dropped}


def _outcome(fields: dict[bytes, bytes], *, fast: bool) -> Sample | str:
    parse = sample_from_entry if fast else sc._slow_sample
    try:
        return parse(ENTRY_ID, fields, WINDOW, NOW)
    except InvalidEventError as exc:
        return f"invalid: {exc.reason}"


def _same(a: Sample | str, b: Sample | str) -> bool:
    # repr, not ==: -0.0 == 0.0, but they are different samples.
    return type(a) is type(b) and repr(a) == repr(b)


@settings(max_examples=3000)
@given(entries())
@example({b"metric": b"cpu", b"source": b"s", b"value": b"-0", b"occurredAt": b"x"})
def test_fast_path_gives_msgspecs_result_for_any_entry(fields: dict[bytes, bytes]) -> None:
    assert _same(_outcome(fields, fast=True), _outcome(fields, fast=False))


@settings(max_examples=2000)
@given(
    metric=st.text(METRIC_CHARS, min_size=1, max_size=128),
    source=st.text(SOURCE_CHARS, min_size=1, max_size=128),
    value=st.floats(allow_nan=False, allow_infinity=False),
    ms=in_window,
)
def test_producer_entries_take_the_fast_path_and_match_msgspec(
    metric: str, source: str, value: float, ms: int
) -> None:
    fields = {
        keys.FIELD_METRIC: metric.encode(),
        keys.FIELD_SOURCE: source.encode(),
        keys.FIELD_VALUE: repr(value).encode(),
        keys.FIELD_OCCURRED_AT: format_ms(ms).encode(),
    }
    fast = sc._fast_sample(fields, WINDOW, NOW)
    slow = sc._slow_sample(ENTRY_ID, fields, WINDOW, NOW)
    if value == 0.0:
        assert fast is None  # left to msgspec: "-0" and "-0.0" differ there
    else:
        assert fast is not None
        assert repr(fast) == repr(slow)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"-0", "0.0"), (b"-0.0", "-0.0"), (b"1e400", None), (b"01", None), (b"nan", None)],
)
def test_zero_and_out_of_range_values_are_msgspecs(value: bytes, expected: str | None) -> None:
    fields = {
        keys.FIELD_METRIC: b"cpu",
        keys.FIELD_SOURCE: b"s",
        keys.FIELD_VALUE: value,
        keys.FIELD_OCCURRED_AT: format_ms(NOW).encode(),
    }
    outcome = _outcome(fields, fast=True)
    if expected is None:
        assert isinstance(outcome, str)
    else:
        assert isinstance(outcome, Sample)
        assert repr(outcome.value) == expected


def test_name_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc, "_CACHE_LIMIT", 10)
    monkeypatch.setattr(sc, "_metrics", {})
    for i in range(25):
        fields = {
            keys.FIELD_METRIC: b"m%d" % i,
            keys.FIELD_SOURCE: b"s",
            keys.FIELD_VALUE: b"1.5",
            keys.FIELD_OCCURRED_AT: format_ms(NOW).encode(),
        }
        assert sample_from_entry(ENTRY_ID, fields, WINDOW, NOW).metric == f"m{i}"
    assert len(sc._metrics) <= 10


def test_an_entry_with_labels_names_its_series_by_source_and_label_digest() -> None:
    fields = {
        keys.FIELD_METRIC: b"cpu",
        keys.FIELD_SOURCE: b"host1",
        keys.FIELD_VALUE: b"1.5",
        keys.FIELD_OCCURRED_AT: format_ms(NOW).encode(),
        keys.FIELD_LABELS: b'{"mode":"idle","cpu":"cpu0"}',
    }
    first = sample_from_entry(ENTRY_ID, fields, WINDOW, NOW)  # slow path: validates, caches
    again = sc._fast_sample(fields, WINDOW, NOW)
    reordered = {**fields, keys.FIELD_LABELS: b'{"cpu":"cpu0","mode":"idle"}'}
    other = sample_from_entry(
        ENTRY_ID, {**fields, keys.FIELD_LABELS: b'{"cpu":"cpu1"}'}, WINDOW, NOW
    )

    assert first == again
    assert first.labels == {"mode": "idle", "cpu": "cpu0"}
    assert keys.identity_source(first.source) == "host1"
    assert first.source.startswith("host1|")
    # One label set, however its JSON is spelled, is one series; another set another.
    assert sample_from_entry(ENTRY_ID, reordered, WINDOW, NOW).source == first.source
    assert other.source != first.source
    with pytest.raises(InvalidEventError, match="reserved"):
        sample_from_entry(ENTRY_ID, {**fields, keys.FIELD_LABELS: b'{"source":"x"}'}, WINDOW, NOW)
    # An empty set is no labels: the series of the source alone.
    bare = sample_from_entry(ENTRY_ID, {**fields, keys.FIELD_LABELS: b"{}"}, WINDOW, NOW)
    assert (bare.source, bare.labels) == ("host1", None)
