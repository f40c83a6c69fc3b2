"""The telemetry event schema, and its conversions to and from stream entries.

The producer decodes request bodies with ``EVENT_DECODER``; the worker re-validates every
stream entry with :func:`sample_from_entry`, because other writers may put anything there.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import re
from typing import Annotated, NamedTuple

import msgspec

from ingest_shared import keys
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.messages import describe, split_location

_MAX_FLOAT = 1.7976931348623157e308
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_ONE_MS = dt.timedelta(milliseconds=1)

# \A...\Z, never ^...$: "$" also matches before a trailing newline, and these become key names.
# The OpenAPI document publishes them as ^...$ (ECMA-262), see ingest_producer.openapi.
NAME_MAX = 128
# ":" as in Prometheus recording rules (job:requests:rate5m).
METRIC_PATTERN = r"\A[A-Za-z0-9_.:\-]+\Z"
SOURCE_PATTERN = r"\A[A-Za-z0-9_.:@/\-]+\Z"
Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=METRIC_PATTERN)]
Source = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=SOURCE_PATTERN)]
# Labels: what tells apart series of one device and metric beyond the source (Telegraf's
# cpu=cpu0, Prometheus' job, an OTLP attribute). Bounded, so one event cannot create a huge
# key or label set. Names: a letter or "_" first (Prometheus, OTLP and Influx tags fit), no
# character a TimeSeries FILTER gives a meaning to ("=", "!", "(", ",", space).
LABELS_MAX = 32
LABEL_VALUE_MAX = 256
LABELS_MAX_BYTES = 4096  # the whole set as canonical JSON
_LABEL_CHAR = r"[A-Za-z0-9_.:/\-]"
# Not a reserved name (a reserved word not followed by another name character): a lookahead
# both Python and ECMA-262 read alike, so the published pattern says it too.
_NOT_RESERVED = rf"(?!(?:{'|'.join(sorted(keys.RESERVED_LABELS))})(?!{_LABEL_CHAR}))"
LABEL_NAME_BODY = rf"{_NOT_RESERVED}[A-Za-z_]{_LABEL_CHAR}{{0,{NAME_MAX - 1}}}"
LABEL_VALUE_BODY = rf"[^\x00-\x1f\x7f]{{1,{LABEL_VALUE_MAX}}}"  # any text but control characters
LABEL_NAME_PATTERN = rf"\A{LABEL_NAME_BODY}\Z"
LABEL_VALUE_PATTERN = rf"\A{LABEL_VALUE_BODY}\Z"
LabelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=LABEL_NAME_PATTERN)
]
LabelValue = Annotated[
    str, msgspec.Meta(min_length=1, max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)
]
Labels = Annotated[
    dict[LabelName, LabelValue],
    msgspec.Meta(
        max_length=LABELS_MAX,
        description=(
            f"Optional labels (at most {LABELS_MAX}, {LABELS_MAX_BYTES} bytes as JSON) that "
            "tell apart series of one source and metric; each set is its own series. Names "
            f"{', '.join(sorted(keys.RESERVED_LABELS))} are reserved."
        ),
    ),
]
# Times the API documents as RFC 3339 (msgspec states no format for a datetime that may be
# naive; a naive one is still accepted, as UTC). Request bodies are documented from msgspec's
# JSON schema, which takes the keys as they are; responses by Litestar, which takes "extra".
DATE_TIME = msgspec.Meta(extra_json_schema={"format": "date-time"})
DATE_TIME_OUT = msgspec.Meta(extra_json_schema={"extra": {"format": "date-time"}})
# The bounds reject Infinity (JSON 1e400) and NaN (it fails every comparison).
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]


class Base(msgspec.Struct, gc=False):
    """Options every Struct shares: not GC-tracked (no cycles), unknown fields ignored."""


class TelemetryEvent(Base):
    """One reading as a device sends it. ``occurredAt`` is RFC 3339; naive means UTC."""

    source: Source
    metric: Metric
    value: FiniteFloat
    occurredAt: Annotated[dt.datetime, DATE_TIME] | None = None
    labels: Labels | None = None


# occurredAt of a batch's event the server stamps: the append function puts its own time there.
STAMP_AT_APPEND = ""


class EventOut(Base, omit_defaults=True):
    """A validated event as the API echoes it and the stream stores it: ``occurredAt`` in UTC;
    ``labels`` None when it has none (never empty)."""

    source: str
    metric: str
    value: float
    occurredAt: Annotated[str, DATE_TIME_OUT]
    labels: dict[str, str] | None = None

    def stream_fields(self) -> dict[bytes, str]:
        """The stream entry fields, in the tutorial's names (labels last, only if any)."""
        fields = {
            keys.FIELD_SOURCE: self.source,
            keys.FIELD_METRIC: self.metric,
            keys.FIELD_VALUE: repr(self.value),
            keys.FIELD_OCCURRED_AT: self.occurredAt,
        }
        if self.labels:
            fields[keys.FIELD_LABELS] = canonical_labels(self.labels).decode()
        return fields


class Sample(NamedTuple):
    """A validated reading reduced to what a series stores (a tuple: one is built per entry).

    ``source`` names the device's series: its source, or with labels its
    :func:`~ingest_shared.keys.series_identity` (``labels`` then holds them).
    """

    metric: str
    source: str
    timestamp_ms: int
    value: float
    labels: dict[str, str] | None = None


EVENT_DECODER = msgspec.json.Decoder(TelemetryEvent)
JSON_ENCODER = msgspec.json.Encoder()
_SORTED_ENCODER = msgspec.json.Encoder(order="sorted")
_LABELS_DECODER = msgspec.json.Decoder(Labels)


def canonical_labels(labels: dict[str, str]) -> bytes:
    """``labels`` as the stream stores them: one JSON object, keys sorted, no spaces."""
    return _SORTED_ENCODER.encode(labels)


def check_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    """``labels`` (already of type :data:`Labels`) if a series may carry them: None for none
    or an empty set; InvalidEventError for a set over LABELS_MAX_BYTES, the one rule JSON
    Schema cannot state."""
    if not labels:
        return None
    size = len(canonical_labels(labels))
    if size > LABELS_MAX_BYTES:
        msg = f"labels: {size} bytes as JSON, more than {LABELS_MAX_BYTES}"
        raise InvalidEventError(msg, "labels")
    return labels


def now_ms() -> int:
    """Wall clock in epoch milliseconds."""
    return (dt.datetime.now(dt.UTC) - EPOCH) // _ONE_MS


def to_epoch_ms(moment: dt.datetime) -> int:
    """Epoch milliseconds of ``moment``; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // _ONE_MS


# Cached: a batch whose occurredAt the server defaults has one timestamp for all its events,
# and formatting was the producer's largest own cost per event at ~100k events/s (py-spy).
@functools.lru_cache(maxsize=4096)
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
        labels = None if event.labels is None else check_labels(event.labels)
        return EventOut(event.source, event.metric, event.value, format_ms(ts), labels)


# What a protocol's label named like one the service sets itself is renamed to, as Prometheus
# renames a scraped label that clashes with a target label (exporters do use "kind", "source").
EXPORTED_PREFIX = "exported_"


# Label sets valid_labels accepted, by their items in order: an agent sends the same series
# request after request (bounded: cleared when full).
_valid_sets: dict[tuple[tuple[str, str], ...], dict[str, str] | None] = {}


def valid_labels(labels: dict[str, str]) -> dict[str, str] | None:
    """``labels`` checked as an event's (None for an empty set); InvalidEventError naming the
    rule otherwise. For labels that did not come through the JSON decoder (protocols): a
    reserved name is renamed ``exported_<name>`` rather than refused (an agent cannot rename
    its labels; a JSON client can, and gets a 422)."""
    key = tuple(labels.items())
    found = _valid_sets.get(key, labels)
    if found is not labels:
        return found
    checked = _check_protocol_labels(labels)
    if len(_valid_sets) >= _CACHE_LIMIT:
        _valid_sets.clear()
    _valid_sets[key] = checked
    return checked


def _check_protocol_labels(labels: dict[str, str]) -> dict[str, str] | None:
    clashing = keys.RESERVED_LABELS.intersection(labels)
    if clashing:
        labels = dict(labels)
        for name in sorted(clashing):
            renamed = EXPORTED_PREFIX + name
            while renamed in labels:
                renamed = EXPORTED_PREFIX + renamed
            labels[renamed] = labels.pop(name)
    if len(labels) <= LABELS_MAX and all(
        type(name) is str
        and type(value) is str
        and _LABEL_NAME_RE.match(name) is not None
        and _LABEL_VALUE_RE.match(value) is not None
        for name, value in labels.items()
    ):
        # msgspec.convert costs ~6 us a set (it hashes the Annotated type on every call): the
        # same rules by their regexes, msgspec only for the words of an error.
        if sum(len(name) + len(value) + 6 for name, value in labels.items()) * 6 < (
            LABELS_MAX_BYTES
        ):
            return labels or None  # a character is at most 6 bytes of JSON: within the limit
        return check_labels(labels)
    try:
        checked = msgspec.convert(labels, Labels)
    except msgspec.ValidationError as exc:
        raise _invalid_labels(exc) from None
    return check_labels(checked)


# Metric and source names accept_reading found valid (bounded: cleared when full).
_reading_metrics: set[str] = set()
_reading_sources: set[str] = set()


def _check_reading_name(
    name: str, field: str, pattern: re.Pattern[str], seen: set[str], symbols: str
) -> None:
    """Raise InvalidEventError unless ``name`` is a valid ``field`` (metric or source) name;
    remember it in ``seen`` when it is."""
    if pattern.search(name) is None or len(name) > NAME_MAX:
        msg = (
            f"{field} {name[:NAME_MAX]!r}: must be 1\u2013{NAME_MAX} characters: letters, "
            f"digits, {symbols}"
        )
        raise InvalidEventError(msg, field)
    if len(seen) >= _CACHE_LIMIT:
        seen.clear()
    seen.add(name)


def accept_reading(
    window: TimeWindow,
    now: int,
    *,
    metric: str,
    source: str,
    value: float,
    timestamp_ms: int | None,
    labels: dict[str, str] | None,
) -> EventOut:
    """A reading that did not come as a JSON event (a protocol's sample), checked by the same
    rules: names, a finite value, the time window (None: stamped at append). ``labels`` must
    already be :func:`valid_labels`' result. Raises InvalidEventError naming the field."""
    # Sets first: a name checked once is not searched again (agents repeat them).
    if metric not in _reading_metrics:
        _check_reading_name(metric, "metric", _METRIC_RE, _reading_metrics, "`_ . : -`")
    if source not in _reading_sources:
        _check_reading_name(source, "source", _SOURCE_RE, _reading_sources, "`_ . : @ / -`")
    if not math.isfinite(value) or abs(value) > _MAX_FLOAT:
        msg = "value: must be a finite number"
        raise InvalidEventError(msg, "value")
    if timestamp_ms is None:
        return EventOut(source, metric, value, STAMP_AT_APPEND, labels)
    if timestamp_ms > now + window.max_clock_skew_ms:
        msg = f"occurredAt: is more than {window.max_clock_skew_ms} ms in the future"
        raise InvalidEventError(msg, "occurredAt")
    if timestamp_ms < now - window.retention_ms or timestamp_ms < 0:
        msg = f"occurredAt: is older than the retention period ({window.retention_ms} ms)"
        raise InvalidEventError(msg, "occurredAt")
    return EventOut(source, metric, value, format_ms(timestamp_ms), labels)


# The worker's fast path (see sample_from_entry). It only ever accepts; anything it is not sure
# of goes through msgspec, so errors and edge cases stay msgspec's. A hypothesis test
# (tests/unit/test_schema_fastpath.py) checks that both paths agree.
_METRIC_RE = re.compile(METRIC_PATTERN)
_SOURCE_RE = re.compile(SOURCE_PATTERN)
_LABEL_NAME_RE = re.compile(LABEL_NAME_PATTERN)
_LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
# A JSON number, the only text msgspec's lax str -> float conversion accepts.
_NUMBER_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_SECOND_RE = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})")
# Validated names and RFC 3339 seconds seen recently; reset when full, so memory stays bounded.
_CACHE_LIMIT = 65_536
_metrics: dict[bytes, str] = {}
_sources: dict[bytes, str] = {}
_seconds: dict[bytes, int] = {}
_occurred: dict[bytes, int] = {}  # whole occurredAt values
_labels: dict[bytes, tuple[str, dict[str, str]]] = {}  # labels field -> (digest, labels)


def labels_from_field(raw: bytes) -> tuple[str, dict[str, str]] | None:
    """The digest and labels of a stream entry's labels field (None: no labels); raise
    InvalidEventError if they are not a valid label set. Written by anyone, so re-encoded
    canonically: the digest names one label set however its JSON was spelled."""
    found = _labels.get(raw)
    if found is not None:
        return found
    try:
        labels = check_labels(_LABELS_DECODER.decode(raw))
    except msgspec.ValidationError as exc:
        raise _invalid_labels(exc) from None
    except msgspec.DecodeError:
        msg = "labels: not a JSON object"
        raise InvalidEventError(msg, "labels") from None
    if labels is None:
        return None
    digest = labels_digest(canonical_labels(labels))
    if len(_labels) >= _CACHE_LIMIT:
        _labels.clear()
    found = _labels[raw] = (digest, labels)
    return found


def labels_digest(canonical: bytes) -> str:
    """The digest naming a label set's series (``keys.series_identity``), of its
    :func:`canonical_labels`."""
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def _invalid_labels(error: msgspec.ValidationError) -> InvalidEventError:
    """msgspec's verdict on a labels field, in words."""
    return InvalidEventError(f"labels: {labels_rule(str(error))}", "labels")


def labels_rule(message: str) -> str:
    """What a label set must be, for msgspec's ``message`` about one (error path only)."""
    if "at `key` in" in message:
        return (
            f"names must be 1\u2013{NAME_MAX} characters: a letter or `_`, then letters, "
            f"digits, `_ . : / -`; not {', '.join(sorted(keys.RESERVED_LABELS))} (reserved)"
        )
    if "[...]" in message:
        return f"values must be 1\u2013{LABEL_VALUE_MAX} characters, no control characters"
    if "length <=" in message:
        return f"at most {LABELS_MAX} labels"
    return "must be a JSON object of string values"


def _valid_name(raw: bytes, pattern: re.Pattern[str], cache: dict[bytes, str]) -> str | None:
    """``raw`` as str if it passes the Metric or Source rule (``pattern``), else None."""
    # Both patterns are ASCII-only, so the length in bytes is the length in characters.
    if not raw.isascii() or len(raw) > NAME_MAX:
        return None
    name = raw.decode()
    if pattern.search(name) is None:
        return None
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[raw] = name
    return name


def _epoch_second(text: bytes) -> int | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (UTC), or None if not exactly that and valid."""
    match = _SECOND_RE.fullmatch(text)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, sec = map(int, match.groups())
        moment = dt.datetime(year, month, day, hour, minute, sec, tzinfo=dt.UTC)
    except ValueError:  # Feb 30, hour 24, year 0, ...
        return None
    second = (moment - EPOCH) // dt.timedelta(seconds=1)
    if len(_seconds) >= _CACHE_LIMIT:
        _seconds.clear()
    _seconds[text] = second
    return second


def _occurred_ms(occurred: bytes) -> int | None:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS[.mmm]Z``, or None for anything else."""
    # A batch the producer stamped shares one occurredAt: one dict lookup instead of parsing.
    cached = _occurred.get(occurred)
    if cached is not None:
        return cached
    size = len(occurred)
    if size == 24 and occurred[19] == 46 and occurred[23] == 90 and occurred[20:23].isdigit():
        millis = int(occurred[20:23])  # ".mmmZ"
    elif size == 20 and occurred[19] == 90:  # "Z"
        millis = 0
    else:
        return None
    head = occurred[:19]
    second = _seconds.get(head)
    if second is None:
        second = _epoch_second(head)
        if second is None:
            return None
    if len(_occurred) >= _CACHE_LIMIT:
        _occurred.clear()
    ms = _occurred[occurred] = second * 1000 + millis
    return ms


def _fast_sample(fields: dict[bytes, bytes], window: TimeWindow, now: int) -> Sample | None:
    """The Sample of an entry exactly as the producer writes it, or None to take the slow path.

    Accepts ``value`` as a JSON number and ``occurredAt`` as ``YYYY-MM-DDTHH:MM:SS[.mmm]Z``.
    """
    metric = fields.get(keys.FIELD_METRIC)
    source = fields.get(keys.FIELD_SOURCE)
    raw_value = fields.get(keys.FIELD_VALUE)
    occurred = fields.get(keys.FIELD_OCCURRED_AT)
    raw_labels = fields.get(keys.FIELD_LABELS)
    labelled = None if raw_labels is None else _labels.get(raw_labels)
    if (
        metric is None
        or source is None
        or raw_value is None
        or occurred is None
        # Labels seen for the first time: the slow path validates and remembers them.
        or (raw_labels is not None and labelled is None)
    ):
        return None
    # Valid names are never empty, so `or` only runs the check on a cache miss.
    metric_name = _metrics.get(metric) or _valid_name(metric, _METRIC_RE, _metrics)
    source_name = _sources.get(source) or _valid_name(source, _SOURCE_RE, _sources)
    if metric_name is None or source_name is None or _NUMBER_RE.fullmatch(raw_value) is None:
        return None
    value = float(raw_value)
    # 0: msgspec reads "-0" as the integer 0, so +0.0, where float() gives -0.0.
    if not math.isfinite(value) or value == 0.0:
        return None
    ts = _occurred_ms(occurred)
    if ts is None:
        return None
    # TimeWindow.timestamp_ms's conditions: outside them, the slow path raises its error.
    if ts > now + window.max_clock_skew_ms or ts < now - window.retention_ms or ts < 0:
        return None
    labels = None
    if labelled is not None:
        source_name = keys.series_identity(source_name, labelled[0])
        labels = labelled[1]
    # tuple.__new__: Sample(...) runs a Python-level __new__, a visible cost per entry.
    return tuple.__new__(Sample, (metric_name, source_name, ts, value, labels))


def sample_from_entry(
    entry_id: bytes, fields: dict[bytes, bytes], window: TimeWindow, now: int
) -> Sample:
    """Validate one stream entry written by anyone; raise InvalidEventError if it never can be."""
    # The producer's own entries take the fast path; everything else gets msgspec's verdict.
    sample = _fast_sample(fields, window, now)
    if sample is not None:
        return sample
    return _slow_sample(entry_id, fields, window, now)


def _slow_sample(
    entry_id: bytes, fields: dict[bytes, bytes], window: TimeWindow, now: int
) -> Sample:
    """sample_from_entry through msgspec: the reference for what is valid, and every error."""
    raw: dict[str, str] = {}
    for field in (keys.FIELD_SOURCE, keys.FIELD_METRIC, keys.FIELD_VALUE, keys.FIELD_OCCURRED_AT):
        name = field.decode()
        found = fields.get(field)
        if found is None:
            if field == keys.FIELD_OCCURRED_AT:
                continue
            raise InvalidEventError(f"{name}: missing", name)
        if not found and field == keys.FIELD_OCCURRED_AT:
            continue  # empty: an append function of an older release did not stamp it
        try:
            raw[name] = found.decode()
        except UnicodeDecodeError:
            raise InvalidEventError(f"{name}: not valid UTF-8", name) from None
    try:
        # strict=False: stream values are strings ("12.5"); NaN and inf still fail the bounds.
        event = msgspec.convert(raw, TelemetryEvent, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    # An entry without occurredAt happened when it was enqueued, not when it is processed.
    ts = window.timestamp_ms(event, now, fallback_ms=int(entry_id.split(b"-", 1)[0]))
    raw_labels = fields.get(keys.FIELD_LABELS)
    labelled = None if raw_labels is None else labels_from_field(raw_labels)
    if labelled is None:
        return Sample(event.metric, event.source, ts, event.value)
    digest, labels = labelled
    identity = keys.series_identity(event.source, digest)
    return Sample(event.metric, identity, ts, event.value, labels)


def _invalid(error: msgspec.ValidationError) -> InvalidEventError:
    """msgspec's verdict on a stream entry, in the words the producer's 422s use."""
    field, message = split_location(str(error))
    if field is None:
        return InvalidEventError(message)
    annotation = _EVENT_FIELD_TYPES.get(field)
    words = message if annotation is None else describe(annotation, message)
    # Every reason starts with the field it is about, as the dead letter's reader needs.
    return InvalidEventError(f"{field}: {words}", field)


_EVENT_FIELD_TYPES = {f.encode_name: f.type for f in msgspec.structs.fields(TelemetryEvent)}
