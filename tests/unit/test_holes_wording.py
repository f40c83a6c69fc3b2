"""Error wording that names what it is about: the limit of a list, the field of a reason, the
parameter given twice; and the entry bound the recent view shares with the worker."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from ingest_producer.models import FieldError, ReplayRequest
from ingest_producer.reading import params
from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.messages import describe, field_first, split_location
from ingest_shared.schema import _invalid
from ingest_shared.settings import load_settings
from ingest_shared.streams import bounded_fields


def test_a_list_over_its_length_names_the_limit() -> None:
    ids = {"ids": ["1-0"] * 10_001}
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.convert(ids, ReplayRequest)
    field, message = split_location(str(raised.value))
    annotation = msgspec.structs.fields(ReplayRequest)[0].type

    assert field == "ids"
    assert describe(annotation, message) == "must be a JSON array of at most 10000 items"


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        (msgspec.Meta(min_length=1, max_length=5), "must be a JSON array of 1 to 5 items"),
        (msgspec.Meta(min_length=1), "must be a JSON array of at least 1 item"),
    ],
)
def test_list_bounds_are_worded(meta: msgspec.Meta, words: str) -> None:
    annotation = Annotated[list[int], meta]
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.convert([] if meta.min_length else [0] * 6, annotation)
    assert describe(annotation, split_location(str(raised.value))[1]) == words


def test_a_reason_from_msgspec_starts_with_its_field_even_without_a_known_type() -> None:
    error = msgspec.ValidationError("Expected `str`, got `int` - at `$.extra`")

    assert _invalid(error).reason == "extra: Expected `str`, got `int`"


@pytest.mark.parametrize(
    ("reason", "field", "shown"),
    [
        ("is more than 300000 ms in the future", "occurredAt", "occurredAt: is more than "),
        ("value: must be a finite number", "value", "value: must be a finite number"),
        ("metric 'x y': must be 1-128 characters", "metric", "metric 'x y': must be"),
        ("a field is not valid UTF-8", None, "a field is not valid UTF-8"),
    ],
)
def test_field_first_prefixes_the_field_once(reason: str, field: str | None, shown: str) -> None:
    assert field_first(reason, field).startswith(shown)
    assert field_first(field_first(reason, field), field) == field_first(reason, field)


@pytest.mark.parametrize(
    ("query", "repeated"),
    [
        (b"source=a&source=b", FieldError("source", "given more than once; it takes one value")),
        (
            b"count=1&before=1-0&count=2",
            FieldError("count", "given more than once; it takes one value"),
        ),
        (b"label=a%3Db&label=c%3Dd&source=a", None),
        (b"source=a&metric=b", None),
        (b"", None),
    ],
)
def test_a_one_value_parameter_given_twice_is_found(
    query: bytes, repeated: FieldError | None
) -> None:
    assert params.repeated_parameter(query) == repeated


def test_an_entry_over_the_limit_is_bounded_like_the_worker_bounds_it() -> None:
    fields = {b"source": b"s", b"metric": b"m", b"value": b"1" * 5_000}
    size = 6 + 1 + 6 + 1 + 5 + 5_000

    bounded = bounded_fields(fields, 1_000, prefix_bytes=20)

    # 20 bytes of names and values (lua/worker.lua's count), joined by spaces.
    assert bounded == {
        k.FIELD_OVERSIZED: str(size).encode(),
        k.FIELD_PREFIX: b"source s metric m value 1",
    }
    assert bounded_fields(fields, size) is fields
    assert bounded_fields(fields, 0) is fields  # 0: no bound


def test_trusted_proxies_are_none_by_default_and_checked() -> None:
    assert load_settings({}).trusted_proxies == ()
    proxies = load_settings({"INGEST_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1"})
    assert proxies.trusted_proxies == ("10.0.0.0/8", "127.0.0.1", "::1")
    assert load_settings({"INGEST_TRUSTED_PROXIES": "*"}).trusted_proxies == ("*",)
    with pytest.raises(ConfigurationError, match=r"INGEST_TRUSTED_PROXIES: 'proxy\.local'"):
        load_settings({"INGEST_TRUSTED_PROXIES": "proxy.local"})
