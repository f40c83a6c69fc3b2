"""The telemetry event schema, and its conversions to and from stream entries.

The producer decodes request bodies with ``EVENT_DECODER``; the worker re-validates every
stream entry with :func:`sample_from_entry`, because other writers may put anything there.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, NamedTuple

import msgspec

from ingest_shared import keys
from ingest_shared.exceptions import InvalidEventError

_MAX_FLOAT = 1.7976931348623157e308
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_ONE_MS = dt.timedelta(milliseconds=1)

# \A...\Z, never ^...$: "$" also matches before a trailing newline, and these become key names.
Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[A-Za-z0-9_.\-]+\Z")]
Source = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[A-Za-z0-9_.:@/\-]+\Z")
]
# The bounds reject Infinity (JSON 1e400) and NaN (it fails every comparison).
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]


class Base(msgspec.Struct, gc=False):
    """Options every Struct shares: not GC-tracked (no cycles), unknown fields ignored."""


class TelemetryEvent(Base):
    """One reading as a device sends it. ``occurredAt`` is RFC 3339; naive means UTC."""

    source: Source
    metric: Metric
    value: FiniteFloat
    occurredAt: dt.datetime | None = None


class EventOut(Base):
    """A validated event as the API echoes it and the stream stores it: ``occurredAt`` in UTC."""

    source: str
    metric: str
    value: float
    occurredAt: str

    def stream_fields(self) -> dict[bytes, str]:
        """The stream entry fields, in the tutorial's names."""
        return {
            keys.FIELD_SOURCE: self.source,
            keys.FIELD_METRIC: self.metric,
            keys.FIELD_VALUE: repr(self.value),
            keys.FIELD_OCCURRED_AT: self.occurredAt,
        }


class Sample(NamedTuple):
    """A validated reading reduced to what a series stores (a tuple: one is built per entry)."""

    metric: str
    source: str
    timestamp_ms: int
    value: float


EVENT_DECODER = msgspec.json.Decoder(TelemetryEvent)
JSON_ENCODER = msgspec.json.Encoder()


def now_ms() -> int:
    """Wall clock in epoch milliseconds."""
    return (dt.datetime.now(dt.UTC) - EPOCH) // _ONE_MS


def to_epoch_ms(moment: dt.datetime) -> int:
    """Epoch milliseconds of ``moment``; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // _ONE_MS


def format_ms(timestamp_ms: int) -> str:
    """RFC 3339 UTC with a ``Z``; milliseconds only when there are any."""
    wall = (_EPOCH_NAIVE + timestamp_ms * _ONE_MS).isoformat(timespec="seconds")
    frac = timestamp_ms % 1000
    return f"{wall}.{frac:03d}Z" if frac else f"{wall}Z"


class TimeWindow(Base):
    """Which occurredAt values are acceptable, relative to the clock at check time.

    Future samples are refused beyond a small skew: one far-future sample in a series makes
    every later normal sample of it fail as "older than retention".
    """

    max_clock_skew_ms: int
    retention_ms: int

    def timestamp_ms(self, event: TelemetryEvent, now: int, fallback_ms: int | None = None) -> int:
        """The sample time of ``event`` if it lies in the window at time ``now``.

        ``fallback_ms`` (default ``now``) stands in for a missing occurredAt.
        """
        if event.occurredAt is None:
            ts = now if fallback_ms is None else fallback_ms
        else:
            ts = to_epoch_ms(event.occurredAt)
            if ts > now + self.max_clock_skew_ms:
                msg = f"is more than {self.max_clock_skew_ms} ms in the future"
                raise InvalidEventError(msg, "occurredAt")
        if ts < now - self.retention_ms or ts < 0:
            msg = f"is older than the retention period ({self.retention_ms} ms)"
            raise InvalidEventError(msg, "occurredAt")
        return ts

    def accept(self, event: TelemetryEvent, now: int) -> EventOut:
        """The producer's check: the event as it will be enqueued and echoed."""
        ts = self.timestamp_ms(event, now)
        return EventOut(event.source, event.metric, event.value, format_ms(ts))


def sample_from_entry(
    entry_id: bytes, fields: dict[bytes, bytes], window: TimeWindow, now: int
) -> Sample:
    """Validate one stream entry written by anyone; raise InvalidEventError if it never can be."""
    try:
        raw = {
            "source": fields[keys.FIELD_SOURCE].decode(),
            "metric": fields[keys.FIELD_METRIC].decode(),
            "value": fields[keys.FIELD_VALUE].decode(),
        }
        occurred = fields.get(keys.FIELD_OCCURRED_AT)
        if occurred is not None:
            raw["occurredAt"] = occurred.decode()
    except KeyError as exc:
        msg = f"missing field {exc.args[0].decode()!r}"
        raise InvalidEventError(msg) from None
    except UnicodeDecodeError:
        msg = "a field is not valid UTF-8"
        raise InvalidEventError(msg) from None
    try:
        # strict=False: stream values are strings ("12.5"); NaN and inf still fail the bounds.
        event = msgspec.convert(raw, TelemetryEvent, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidEventError(str(exc)) from None
    # An entry without occurredAt happened when it was enqueued, not when it is processed.
    ts = window.timestamp_ms(event, now, fallback_ms=int(entry_id.split(b"-", 1)[0]))
    return Sample(event.metric, event.source, ts, event.value)
