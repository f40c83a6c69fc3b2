"""What every protocol decoder returns, and the one error it raises.

A decoder turns a request body into ``Decoded``: the numeric samples it found, the items it
refused (each with its raw text or a short description and a reason), and counts of what it
dropped on purpose (``skipped``, by reason). It never validates metric, source or label names:
the shared event validation does that for every protocol alike. The only exception a decoder
raises for any body is ``ProtocolError`` (a ``ValueError``): the body as a whole cannot be read.
"""

from __future__ import annotations

import msgspec

from ingest_shared.exceptions import BodyTooLargeError, ProtocolError
from ingest_shared.schema import Base

__all__ = ["BodyTooLargeError", "Decoded", "ProtocolError", "ProtocolSample", "Rejected"]

# Reasons counted in ``Decoded.skipped``: dropped by design, never an error for the request.
SKIP_STRING_FIELD = "string_field"  # a line-protocol string field value
SKIP_NAN = "nan"
SKIP_INFINITY = "infinity"
SKIP_STALE_MARKER = "stale_marker"  # Prometheus' "series gone" NaN
SKIP_HISTOGRAM = "histogram"  # a remote-write native histogram
SKIP_NO_RECORDED_VALUE = "no_recorded_value"  # OTLP's flag for a point with no value
SKIP_NON_SCALAR_ATTRIBUTE = "non_scalar_attribute"  # an OTLP array/kvlist/bytes attribute

# The label an OTLP Sum point carries, so delta and cumulative series never mix (otlp.py).
TEMPORALITY_LABEL = "temporality"
DELTA = "delta"
CUMULATIVE = "cumulative"


class ProtocolSample(Base):
    """One numeric reading, mapped from a protocol onto the event model.

    ``labels`` holds every other tag, label or attribute (the source's own excluded). Samples
    of one line or series share one ``labels`` dict: treat it as read-only. ``timestamp_ms``
    None means "time of receipt".
    """

    metric: str
    source: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None = None


class Rejected(Base):
    """An item refused on its own: the raw line, or a short description of a series or
    metric; ``count`` is how many data points it held."""

    item: str
    reason: str
    count: int = 1


class Decoded(Base):
    """A decoded body: samples to validate and append, what was refused, what was dropped."""

    samples: list[ProtocolSample] = msgspec.field(default_factory=list)
    rejected: list[Rejected] = msgspec.field(default_factory=list)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
