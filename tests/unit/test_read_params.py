"""Read-side helpers without Redis: bucket arithmetic, time parsing, reply shapes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.exceptions import HTTPException

from ingest_producer.reading import aggregates, params, replies


@given(st.integers(0, 10**13), st.integers(0, 10**10), st.integers(1, 10_000))
def test_the_named_bucket_fits_and_is_about_the_range_over_the_limit(
    start: int, span: int, limit: int
) -> None:
    end = start + span
    bucket = params.fitting_bucket(start, end, limit)
    assert params.buckets_between(start, end, bucket) <= limit
    assert bucket <= -(-(span + 1) // limit) + 1


@given(st.integers(0, 10**13), st.integers(0, 10**7), st.integers(1, 10**6))
def test_buckets_between_counts_bucket_starts(start: int, span: int, bucket: int) -> None:
    end = start + span
    expected = sum(1 for t in range(start, end + 1) if t % bucket == 0) if span < 3000 else None
    if expected is not None:
        assert params.buckets_between(start, end, bucket) == expected
    assert params.first_bucket(start, bucket) % bucket == 0
    assert start <= params.first_bucket(start, bucket) < start + bucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1700000000000", 1_700_000_000_000),
        ("9" * 13, 9_999_999_999_999),  # the most the documented pattern allows
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
        ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500),
    ],
)
def test_times_are_epoch_ms_or_rfc3339(text: str, expected: int) -> None:
    assert params.epoch_ms(text, "from") == expected


@pytest.mark.parametrize(
    "text", ["-1", "now", "1e12", "1700000000000.5", "9" * 16, "1" + "0" * 13, ""]
)
def test_other_times_are_422(text: str) -> None:
    with pytest.raises(HTTPException) as caught:
        params.epoch_ms(text, "to")
    assert caught.value.status_code == 422


@pytest.mark.parametrize("name", ["a,kind=x", "x)", "a b", "", "{", "*", "a\n", "é", "m" * 129])
def test_names_follow_the_event_schema(name: str) -> None:
    with pytest.raises(HTTPException):
        params.metric_name(name)
    with pytest.raises(HTTPException):
        params.source_name(name)


def test_resp2_and_resp3_replies_read_the_same() -> None:
    resp3 = {b"k": [{b"metric": b"cpu"}, {b"aggregators": []}, [[1, 2.0]]]}
    resp2 = [[b"k", [[b"metric", b"cpu"]], [[1, b"2"]]]]
    assert replies.mrange(resp3) == replies.mrange(resp2)
    mget3 = {b"k": [{b"metric": None}, []]}
    mget2 = [[b"k", [[b"metric", None]], []]]
    assert replies.mget(mget3) == replies.mget(mget2) == [replies.Series("k", {"metric": None}, [])]


def test_fleet_plans_combine_parts_bucket_by_bucket() -> None:
    avg = aggregates.FLEET_PLANS["avg"]
    combined = aggregates.combine(avg, [[(0, 70.0), (60, 0.0)], [(0, 4.0), (60, 0.0)]])
    assert combined == [(0, 17.5)]  # a bucket with no samples has no average
    spread = aggregates.combine(aggregates.FLEET_PLANS["range"], [[(0, 9.0)], [(0, 2.0)]])
    assert spread == [(0, 7.0)]
    assert set(aggregates.FLEET_PLANS) | set(aggregates.NEEDS_SOURCE) == set(
        ("avg", "min", "max", "sum", "count", "first", "last", "range", "std.p")
    )
