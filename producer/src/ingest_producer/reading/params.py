"""Checks of read-route parameters, done before any key or FILTER is built: a 422 otherwise.

Metric and source names follow the event schema's own rules (``ingest_shared.schema``
``Metric`` / ``Source``: anchored with ``\\A...\\Z``), so no name can reach outside the series
prefix or add a FILTER term (``metric=a,kind=x``, ``source=x)``).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import msgspec
from litestar.exceptions import HTTPException

from ingest_producer.errors import validation_detail
from ingest_producer.models import (
    CURSOR_ID_PATTERN,
    QUALIFIED_ID_PATTERN,
    STREAM_ID_PATTERN,
    FieldError,
)
from ingest_shared.keys import AGGREGATIONS, stored_label_value
from ingest_shared.messages import describe
from ingest_shared.schema import (
    LABEL_NAME_BODY,
    LABEL_VALUE_BODY,
    LABEL_VALUE_MAX,
    NAME_MAX,
    Metric,
    Source,
    to_epoch_ms,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

STREAM_ID = re.compile(STREAM_ID_PATTERN)
# A label filter, name=value: an event label's name (reserved names excluded) and value, as one
# pattern so the OpenAPI document states it whole.
LABEL_FILTER_PATTERN = rf"\A{LABEL_NAME_BODY}={LABEL_VALUE_BODY}\Z"
LABEL_FILTER = re.compile(LABEL_FILTER_PATTERN)
LABEL_FILTER_RULE = (
    f"must be name=value: the name 1\u2013{NAME_MAX} characters (a letter or `_`, then "
    "letters, digits, `_ . : / -`; not a reserved name such as metric or source), the value "
    f"1\u2013{LABEL_VALUE_MAX} characters without control characters"
)
# CURSOR_ID_PATTERN with the id and the shard index captured.
_QUALIFIED = re.compile(r"\A([0-9]{1,19}-[0-9]{1,19})(?:@(0|[1-9][0-9]{0,3}))?\Z")
# Up to 13 digits (year 2286), so the pattern the OpenAPI document publishes says it all.
EPOCH_MS_PATTERN = r"\A[0-9]{1,13}\Z"
_EPOCH_MS = re.compile(EPOCH_MS_PATTERN)
# RFC 3339 times may lie further out; they get the same bound.
MAX_EPOCH_MS = 9_999_999_999_999


def invalid(field: str, message: str) -> HTTPException:
    """The 422 every bad read parameter gets."""
    errors = [FieldError(field, message)]
    return HTTPException(status_code=422, detail=validation_detail(errors), extra=errors)


def metric_name(value: str, field: str = "metric") -> str:
    """``value`` if it is a valid metric name (the event schema's rule), else a 422."""
    try:
        return msgspec.convert(value, Metric)
    except msgspec.ValidationError as exc:
        raise invalid(field, describe(Metric, str(exc))) from None


def source_name(value: str, field: str = "source") -> str:
    """``value`` if it is a valid source name (the event schema's rule), else a 422."""
    try:
        return msgspec.convert(value, Source)
    except msgspec.ValidationError as exc:
        raise invalid(field, describe(Source, str(exc))) from None


def optional_source(value: str | None) -> str | None:
    """None (the fleet) or a valid source name."""
    return None if value is None else source_name(value)


def label_filters(values: list[str] | None) -> list[tuple[str, str]]:
    """``label`` parameters (each ``name=value``, an event label's rule) as (name, value)
    pairs; a 422 for a malformed one or a reserved name."""
    found: list[tuple[str, str]] = []
    for text in values or ():
        if LABEL_FILTER.match(text) is None:
            raise invalid("label", f"{text[:64]!r}: {LABEL_FILTER_RULE}")
        name, _, value = text.partition("=")
        found.append((name, value))
    return found


def label_terms(labels: Iterable[tuple[str, str]]) -> list[str]:
    """FILTER terms matching series that carry every one of ``labels``."""
    return [f"{name}={stored_label_value(value)}" for name, value in labels]


def aggregation(value: str | None) -> str | None:
    """None (raw points) or one of the known aggregations."""
    if value is None or value in AGGREGATIONS:
        return value
    raise invalid("agg", f"must be one of {', '.join(AGGREGATIONS)}")


def stream_id(value: str, field: str = "id") -> str:
    """A full stream entry id (``<ms>-<seq>``), else a 422."""
    if STREAM_ID.match(value) is None:
        raise invalid(field, "must be a stream entry id like 1700000000000-0")
    return value


def dead_letter_pattern(shards: int, *, cursor: bool = False) -> str:
    """The dead-letter ids of a layout with ``shards`` shards: plain stream ids with one, ids
    qualified by their shard (``<ms>-<seq>@<shard>``) with more, since two shards' dead
    letters can have the same id. A ``cursor`` (``before``) may also be plain: older than that
    id in every shard."""
    if shards == 1:
        return STREAM_ID_PATTERN
    return CURSOR_ID_PATTERN if cursor else QUALIFIED_ID_PATTERN


def dead_letter_id(value: str, shards: int, field: str = "id") -> tuple[str, int]:
    """(stream id, shard index) of a dead-letter id (see :func:`dead_letter_pattern`), or a
    422."""
    if shards == 1:
        return stream_id(value, field), 0
    letter_id, index = _qualified(value, shards, field)
    if index is None:
        example = f"1700000000000-0@{shards - 1}"
        raise invalid(field, f"must be a dead-letter id like {example} (id@shard)")
    return letter_id, index


def dead_letter_cursor(value: str, shards: int, field: str = "before") -> tuple[str, int]:
    """A ``before`` cursor: (stream id, shard index); a plain id with several shards means
    older than it in every shard (index 0: dead letters sort by id, then shard)."""
    if shards == 1:
        return stream_id(value, field), 0
    letter_id, index = _qualified(value, shards, field, " or a stream id")
    return letter_id, 0 if index is None else index


def _qualified(value: str, shards: int, field: str, or_else: str = "") -> tuple[str, int | None]:
    match = _QUALIFIED.match(value)
    if match is None:
        example = f"1700000000000-0@{shards - 1}"
        raise invalid(field, f"must be a dead-letter id like {example} (id@shard){or_else}")
    letter_id, index = match.group(1), match.group(2)
    if index is None:
        return letter_id, None
    if int(index) >= shards:
        raise invalid(field, f"names shard {index}, but there are {shards} (0 to {shards - 1})")
    return letter_id, int(index)


def epoch_ms(value: str, field: str) -> int:
    """Epoch milliseconds, or an RFC 3339 time (naive = UTC), as epoch milliseconds."""
    if _EPOCH_MS.match(value):
        ms = int(value)
    else:
        try:
            moment = msgspec.convert(value, dt.datetime)
        except msgspec.ValidationError:
            msg = "must be epoch milliseconds or an RFC 3339 time"
            raise invalid(field, msg) from None
        ms = to_epoch_ms(moment)
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise invalid(field, f"must be between 0 and {MAX_EPOCH_MS} epoch milliseconds")
    return ms


def time_range(from_: str | None, to: str | None, now: int, default_ms: int) -> tuple[int, int]:
    """(from, to) in epoch ms: ``to`` defaults to ``now``, ``from`` to ``to - default_ms``."""
    end = now if to is None else epoch_ms(to, "to")
    start = max(0, end - default_ms) if from_ is None else epoch_ms(from_, "from")
    if start > end:
        raise invalid("from", "must not be after `to`")
    return start, end


def buckets_between(start: int, end: int, bucket_ms: int) -> int:
    """How many buckets (aligned to epoch 0) start within [start, end]."""
    return end // bucket_ms - first_bucket(start, bucket_ms) // bucket_ms + 1


def first_bucket(start: int, bucket_ms: int) -> int:
    """The first bucket boundary at or after ``start`` (aggregated ranges start there)."""
    return -(-start // bucket_ms) * bucket_ms


def fitting_bucket(start: int, end: int, max_points: int) -> int:
    """A bucket (ms) giving at most ``max_points`` buckets over [start, end]: ceil(span /
    max_points), as [start, end] holds at most ceil(span / bucket) multiples of a bucket."""
    return max(1, -(-(end - start + 1) // max_points))


# Query parameters that may be given several times (each one more filter, ANDed). Any other
# parameter given twice is refused, rather than silently answered for one of its values.
REPEATABLE_PARAMETERS = frozenset({"label"})


def repeated_parameter(query_string: bytes) -> FieldError | None:
    """The error for the first parameter of ``query_string`` given more than once that takes
    one value; None when there is none."""
    seen: set[str] = set()
    # As str: parse_qsl re-encodes the names of a bytes query as ASCII, which may fail.
    text = query_string.decode("latin-1")
    for name, _ in parse_qsl(text, keep_blank_values=True, errors="replace"):
        if name in seen and name not in REPEATABLE_PARAMETERS:
            return FieldError(name[:64], "given more than once; it takes one value")
        seen.add(name)
    return None
