"""Key layout: every series shares a hash tag with its rollup (Redis Cluster slots)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ingest_shared.keys import Keys
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
        stream="s", dead_letter=keys.dead_letter, metrics=keys.metrics, series_prefix="p"
    )
    assert keys.raw("cpu") == "p:{cpu}:raw"


@given(METRICS, SOURCES)
def test_series_share_a_hash_tag_with_their_rollup(metric: str, source: str) -> None:
    assert hash_tag(KEYS.raw(metric)) == hash_tag(KEYS.rollup(metric)) == metric
    assert hash_tag(KEYS.source_raw(metric, source)) == hash_tag(KEYS.source_rollup(metric, source))


@given(METRICS, SOURCES, METRICS, SOURCES)
def test_distinct_pairs_never_share_a_key(m1: str, s1: str, m2: str, s2: str) -> None:
    if (m1, s1) != (m2, s2):
        assert KEYS.source_raw(m1, s1) != KEYS.source_raw(m2, s2)
    all_keys = {KEYS.raw(m1), KEYS.rollup(m1), KEYS.source_raw(m1, s1), KEYS.source_rollup(m1, s1)}
    assert len(all_keys) == 4
