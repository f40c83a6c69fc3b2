"""RedisTimeSeries replies, RESP3 (redis-py's default) or RESP2, as plain Python values.

RESP3 answers TS.MRANGE/TS.MGET with a map of key -> [labels, metadata..., samples]; RESP2
with a list of [key, labels, samples]. Samples are always last and labels first.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

from redis.exceptions import ResponseError

# (timestamp ms, value)
Sample: TypeAlias = tuple[int, float]
# What TS.GET says for a key that is not there.
NO_SERIES = "does not exist"


class Series(NamedTuple):
    """One series of a TS.MRANGE/TS.MGET reply (for GROUPBY: one group, ``key`` "label=value").

    ``labels`` holds the selected labels (None for a selected label the series lacks).
    """

    key: str
    labels: dict[str, str | None]
    samples: list[Sample]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _labels(raw: Any) -> dict[str, str | None]:
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {_text(name): None if value is None else _text(value) for name, value in pairs}


def sample(raw: Any) -> Sample | None:
    """A [timestamp, value] pair; None for the empty reply of an empty series."""
    if not raw:
        return None
    timestamp, value = raw
    return int(timestamp), float(value)


def samples(raw: Any) -> list[Sample]:
    """A TS.RANGE reply (or the samples part of a TS.MRANGE series)."""
    return [(int(timestamp), float(value)) for timestamp, value in raw]


def mrange(reply: Any) -> list[Series]:
    """A TS.MRANGE reply, grouped or not."""
    if isinstance(reply, dict):
        return [Series(_text(key), _labels(v[0]), samples(v[-1])) for key, v in reply.items()]
    return [Series(_text(item[0]), _labels(item[1]), samples(item[-1])) for item in reply]


def mget(reply: Any) -> list[Series]:
    """A TS.MGET reply: each series with its latest sample, or none if it is empty."""
    if isinstance(reply, dict):
        items = [(key, v[0], v[-1]) for key, v in reply.items()]
    else:
        items = [(item[0], item[1], item[-1]) for item in reply]
    return [
        Series(_text(key), _labels(labels), [] if (s := sample(raw)) is None else [s])
        for key, labels, raw in items
    ]


def latest_or_none(reply: object) -> Sample | None:
    """A TS.GET reply, None for an empty or missing series; other errors are raised."""
    if isinstance(reply, ResponseError) and NO_SERIES in str(reply):
        return None
    if isinstance(reply, Exception):
        raise reply
    return sample(reply)


def range_or_none(reply: object) -> list[Sample] | None:
    """A TS.RANGE reply, None for a missing series; other errors are raised."""
    if isinstance(reply, ResponseError) and NO_SERIES in str(reply):
        return None
    if isinstance(reply, Exception):
        raise reply
    return samples(reply)
