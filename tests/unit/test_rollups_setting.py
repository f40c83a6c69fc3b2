"""INGEST_ROLLUPS and the other read-side settings; rollup keys share their series' hash tag."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.keys import Rollup
from ingest_shared.settings import Settings, load_settings


def test_unset_means_the_tutorials_avg_over_the_rollup_bucket() -> None:
    assert load_settings({}).rollup_rules == (Rollup("avg", 60_000),)
    assert load_settings({"INGEST_ROLLUP_BUCKET_MS": "5000"}).rollup_rules == (
        Rollup("avg", 5_000),
    )
    assert Settings(rollup_bucket_ms=1_000).keys.rollups == (Rollup("avg", 1_000),)


def test_rollups_are_parsed_in_order_and_win_over_the_bucket_setting() -> None:
    settings = load_settings(
        {
            "INGEST_ROLLUPS": " avg:60000, MIN:60_000,std.p:1000 ,count:3600000",
            "INGEST_ROLLUP_BUCKET_MS": "5000",
        }
    )
    assert settings.rollup_rules == (
        Rollup("avg", 60_000),
        Rollup("min", 60_000),
        Rollup("std.p", 1_000),
        Rollup("count", 3_600_000),
    )
    assert [r.name for r in settings.keys.rollups] == [
        "avg_60000",
        "min_60000",
        "std.p_1000",
        "count_3600000",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "median:60000",
        "avg:0",
        "avg",
        "avg:",
        "avg:-5",
        "avg:1e3",
        "avg:\uff16\uff10",  # fullwidth digits: isdigit() says yes, int() would too
        "avg:60000,avg:60000",
        "avg:60000,",
        ",".join(f"avg:{i}" for i in range(1, 18)),
    ],
)
def test_a_bad_rollup_list_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="INGEST_ROLLUPS"):
        load_settings({"INGEST_ROLLUPS": value})


def test_sixteen_rollups_are_allowed() -> None:
    value = ",".join(f"max:{i}" for i in range(1, 17))
    assert len(load_settings({"INGEST_ROLLUPS": value}).rollup_rules) == 16


def test_read_side_defaults_and_values() -> None:
    defaults = load_settings({})
    assert (defaults.max_points, defaults.stale_after_ms, defaults.dead_letter_maxlen) == (
        5_000,
        300_000,
        100_000,
    )
    custom = load_settings(
        {
            "INGEST_MAX_POINTS": "100",
            "INGEST_STALE_AFTER_MS": "1000",
            "INGEST_DEAD_LETTER_MAXLEN": "50",
        }
    )
    assert (custom.max_points, custom.stale_after_ms, custom.dead_letter_maxlen) == (100, 1000, 50)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_MAX_POINTS", "0"),
        ("INGEST_MAX_POINTS", "many"),
        ("INGEST_STALE_AFTER_MS", "0"),
        ("INGEST_DEAD_LETTER_MAXLEN", "0"),
    ],
)
def test_bad_read_side_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_settings({name: value})


ROLLUPS = st.builds(
    Rollup,
    st.sampled_from(["avg", "min", "max", "sum", "count", "first", "last", "range", "std.p"]),
    st.integers(1, 10**9),
)
METRICS = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,16}\Z")
SOURCES = st.from_regex(r"\A[A-Za-z0-9_.:@/\-]{1,16}\Z")


def hash_tag(key: str) -> str:
    match = re.search(r"\{([^}]*)\}", key)
    assert match is not None, key
    return match.group(1)


@given(METRICS, SOURCES, ROLLUPS)
def test_every_rollup_shares_its_raw_series_hash_tag(
    metric: str, source: str, rollup: Rollup
) -> None:
    keys = Settings(rollups=(rollup,)).keys
    shard = keys.shard_of_source(source)
    raw = keys.metric_raw(metric, shard)
    for part in keys.partial_rollups:
        assert hash_tag(keys.metric_rollup_of(metric, shard, part)) == hash_tag(raw)
        assert keys.metric_rollup_of(metric, shard, part) != raw
    source_rollup = keys.source_rollup_of(metric, source, rollup)
    assert hash_tag(source_rollup) == hash_tag(keys.source_raw(metric, source))
    assert source_rollup.endswith(f":{rollup.name}")
