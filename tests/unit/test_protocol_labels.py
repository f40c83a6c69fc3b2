"""valid_labels (protocol samples' labels) applies exactly the event schema's label rules,
through its regex fast path and its cache alike; reserved names are renamed, not refused."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_shared import schema
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.keys import RESERVED_LABELS

names = st.one_of(
    st.sampled_from(["cpu", "host.name", "_x", "a:b/c-d", "kinds", "L" * 128, "L" * 129]),
    st.text(min_size=0, max_size=6),
)
values = st.one_of(st.sampled_from(["x", "a,b (c)", "v" * 256, "v" * 257, ""]), st.text(max_size=6))


def verdict_of_schema(labels: dict[str, str]) -> dict[str, str] | str | None:
    try:
        checked = msgspec.convert(labels, schema.Labels)
    except msgspec.ValidationError:
        return "invalid"
    try:
        return schema.check_labels(checked)
    except InvalidEventError:
        return "invalid"


def verdict(labels: dict[str, str]) -> dict[str, str] | str | None:
    try:
        return schema.valid_labels(labels)
    except InvalidEventError:
        return "invalid"


@settings(max_examples=1500)
@given(st.dictionaries(names.filter(lambda n: n not in RESERVED_LABELS), values, max_size=34))
def test_the_fast_path_and_the_cache_agree_with_the_schema(labels: dict[str, str]) -> None:
    expected = verdict_of_schema(labels)

    assert verdict(labels) == expected
    assert verdict(dict(labels)) == expected  # the second time from the cache


def test_names_the_service_sets_are_renamed_exported() -> None:
    renamed = schema.valid_labels({"kind": "x", "exported_kind": "y", "job": "j"})

    # Never onto a label the sample already has.
    assert renamed == {"exported_kind": "y", "job": "j", "exported_exported_kind": "x"}


def test_a_set_over_the_byte_limit_is_refused_naming_it() -> None:
    big = {f"l{i}": "é" * 200 for i in range(20)}  # under 32 labels, over 4,096 bytes

    with pytest.raises(InvalidEventError, match="bytes as JSON"):
        schema.valid_labels(big)
