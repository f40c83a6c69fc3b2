"""Key layout: every series shares a hash tag with its rollup (Redis Cluster slots)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ingest_shared.keys import Keys, Rollup, partial_rollups
from ingest_shared.settings import load_settings

KEYS = load_settings({}).keys
METRICS = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,16}\Z")
SOURCES = st.from_regex(r"\A[A-Za-z0-9_.:@/\-]{1,16}\Z")


def hash_tag(key: str) -> str:
    match = re.search(r"\{([^}]*)\}", key)
    assert match is not None, key
    return match.group(1)


def test_keys_follow_the_settings() -> None:
    keys = load_settings({"INGEST_STREAM_KEY": "s", "INGEST_SERIES_PREFIX": "p"}).keys
    assert keys == Keys(
        stream="s",
        dead_letter=keys.dead_letter,
        metrics=keys.metrics,
        series_prefix="p",
        stream_shards=8,
    )
    assert keys.source_raw("cpu", "a") == "p:{cpu|a}:raw"
    shard = keys.shards[0]
    assert keys.metric_raw("cpu", shard) == f"p:{{{shard.tag}}}:cpu:raw"


@given(METRICS, SOURCES)
def test_series_share_a_hash_tag_with_their_rollup(metric: str, source: str) -> None:
    for shard in KEYS.shards:
        partial = KEYS.metric_raw(metric, shard)
        assert hash_tag(partial) == shard.tag
        for rollup in KEYS.partial_rollups:
            assert hash_tag(KEYS.metric_rollup_of(metric, shard, rollup)) == shard.tag
    assert hash_tag(KEYS.source_raw(metric, source)) == hash_tag(KEYS.source_rollup(metric, source))


@given(METRICS, SOURCES, METRICS, SOURCES)
def test_distinct_pairs_never_share_a_key(m1: str, s1: str, m2: str, s2: str) -> None:
    if (m1, s1) != (m2, s2):
        assert KEYS.source_raw(m1, s1) != KEYS.source_raw(m2, s2)
    shard = KEYS.shard_of_source(s1)
    sum_rollup, count_rollup = KEYS.partial_rollups
    all_keys = {
        KEYS.metric_raw(m1, shard),
        KEYS.metric_rollup_of(m1, shard, sum_rollup),
        KEYS.metric_rollup_of(m1, shard, count_rollup),
        KEYS.source_raw(m1, s1),
        KEYS.source_rollup(m1, s1),
    }
    assert len(all_keys) == 5


@given(METRICS, METRICS)
def test_each_shard_has_its_own_partial_of_a_metric(m1: str, m2: str) -> None:
    partials = {KEYS.metric_raw(m, shard) for m in (m1, m2) for shard in KEYS.shards}
    assert len(partials) == len(KEYS.shards) * len({m1, m2})


def test_the_unsharded_layout_keeps_the_names_of_earlier_releases() -> None:
    keys = load_settings({"INGEST_STREAM_SHARDS": "1"}).keys
    [only] = keys.shards
    assert only.stream == "telemetry:events"
    assert keys.metric_raw("cpu", only) == keys.raw("cpu") == "telemetry:ts:{cpu}:raw"
    assert keys.source_raw("cpu", "a") == "telemetry:ts:{cpu|a}:raw"


def test_partials_carry_the_parts_each_rollup_merges_from() -> None:
    rollups = (
        Rollup("avg", 60_000),
        Rollup("max", 60_000),
        Rollup("sum", 60_000),
        Rollup("last", 60_000),
        Rollup("range", 3_600_000),
    )
    assert partial_rollups(rollups) == (
        Rollup("sum", 60_000),
        Rollup("count", 60_000),
        Rollup("max", 60_000),
        Rollup("max", 3_600_000),
        Rollup("min", 3_600_000),
    )
