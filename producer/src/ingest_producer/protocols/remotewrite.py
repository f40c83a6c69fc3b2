"""Prometheus remote-write 1.0 (snappy block format + protobuf ``prometheus.WriteRequest``).

Each series' samples become samples: the metric is ``__name__``, the source the label named by
``RemoteWriteMapping.source_label`` (default ``instance``), every other label a label.
Timestamps are epoch ms already. NaN, +-Inf and the stale marker (a NaN with its own bits)
are dropped per sample and counted; native histograms are counted as skipped (in series
without float samples, which is how Prometheus sends them); exemplars and metadata are
ignored. A series with no ``__name__`` or no source label (and no
``default_source``) is rejected with its sample count. Only a body that is not snappy or not
a WriteRequest raises ``ProtocolError``.

The messages come from ``remote_write.proto`` compiled into ``remote_write_pb2.py`` (protobuf's
upb backend), read through its ``WriteRequestView`` (labels parsed once per distinct label).
Measured on a 2,000-series request (~410k samples/s): ~1.5x faster than reading it as plain
WriteRequest messages, ~3.7x faster than a hand-written pure-Python protobuf reader.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

import cramjam
from google.protobuf.message import DecodeError

from ingest_producer.protocols import remote_write_pb2
from ingest_producer.protocols.result import (
    SKIP_HISTOGRAM,
    SKIP_INFINITY,
    SKIP_NAN,
    SKIP_STALE_MARKER,
    BodyTooLargeError,
    Decoded,
    ProtocolError,
    ProtocolSample,
    Rejected,
)

METRIC_NAME_LABEL: Final = "__name__"
# Prometheus' staleness marker: a NaN with this exact bit pattern (value.StaleNaN).
STALE_MARKER_BITS: Final = 0x7FF0000000000002
_MAX_FLOAT: Final = 1.7976931348623157e308
_BITS: Final = struct.Struct("<Q")
_DOUBLE: Final = struct.Struct("<d")
DEFAULT_MAX_DECODED_BYTES: Final = 64 * 1024 * 1024
# A rejected series is described by its labels, cut to this many characters.
_DESCRIPTION_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class RemoteWriteMapping:
    """Which label names the source; ``default_source`` None rejects series without it."""

    source_label: str = "instance"
    default_source: str | None = None


DEFAULT_MAPPING: Final = RemoteWriteMapping()


def decode_remote_write(
    body: bytes,
    mapping: RemoteWriteMapping = DEFAULT_MAPPING,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Decoded:
    """Decode a remote-write 1.0 request body (snappy block format, as sent).

    Raises ``BodyTooLargeError`` when the body says it decompresses to more than
    ``max_decoded_bytes`` (checked before decompressing), ``ProtocolError`` when it is not
    snappy or not a WriteRequest.
    """
    request = parse_write_request(decompress(body, max_decoded_bytes))
    result = Decoded()
    samples = result.samples
    nan = infinite = stale = histograms = 0
    known = _known_series(mapping)
    for series in request.timeseries:
        points = series.samples
        if not points:
            # Prometheus sends a series' native histograms with no float samples beside them;
            # checking every series for histograms cost ~15% of the decode.
            histograms += len(series.histograms)
            continue
        encoded = tuple(series.labels)
        found = known.get(encoded)
        if found is None:
            found = _series_of(encoded, mapping)
            if len(known) >= _KNOWN_SERIES_LIMIT:
                known.clear()
            known[encoded] = found
        metric, source, labels, reason = found
        if source is None:
            result.rejected.append(Rejected(metric, reason, len(points)))  # metric: description
            continue
        for sample in points:
            value = sample.value
            if -_MAX_FLOAT <= value <= _MAX_FLOAT:
                samples.append(ProtocolSample(metric, source, labels, value, sample.timestamp))
            elif math.isinf(value):
                infinite += 1
            elif _BITS.unpack(_DOUBLE.pack(value))[0] == STALE_MARKER_BITS:
                stale += 1
            else:
                nan += 1
    for reason, count in (
        (SKIP_NAN, nan),
        (SKIP_INFINITY, infinite),
        (SKIP_STALE_MARKER, stale),
        (SKIP_HISTOGRAM, histograms),
    ):
        if count:
            result.skipped[reason] = count
    return result


def decompress(body: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> bytes:
    """Undo snappy's block format (not the framed one), refusing oversized output first."""
    try:
        size = cramjam.snappy.decompress_raw_len(body)
        if size > max_decoded_bytes:
            msg = f"body decompresses to {size} bytes, more than the {max_decoded_bytes} allowed"
            raise BodyTooLargeError(msg)
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as error:
        msg = f"body is not snappy block format (remote-write 1.0): {error}"
        raise ProtocolError(msg) from None


def parse_write_request(data: bytes) -> remote_write_pb2.WriteRequestView:
    """The ``prometheus.WriteRequest`` in ``data`` (decompressed), labels left encoded."""
    request = remote_write_pb2.WriteRequestView()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        msg = f"body is not a prometheus.WriteRequest: {error}"
        raise ProtocolError(msg) from None
    return request


# A series as its encoded labels -> (metric, source, labels, ""), or for a series to reject
# (description, None, {}, reason). Prometheus sends the same series request after request:
# the labels of a known one are not parsed again (~1/3 of the decode of 2,000 series).
_Series = tuple[str, str | None, dict[str, str], str]
_KNOWN_SERIES_LIMIT: Final = 100_000
_known: dict[RemoteWriteMapping, dict[tuple[bytes, ...], _Series]] = {}


def _known_series(mapping: RemoteWriteMapping) -> dict[tuple[bytes, ...], _Series]:
    return _known.setdefault(mapping, {})


def _series_of(encoded: tuple[bytes, ...], mapping: RemoteWriteMapping) -> _Series:
    labels = dict(map(_label, encoded))
    metric = labels.pop(METRIC_NAME_LABEL, None)
    source = labels.pop(mapping.source_label, None) or mapping.default_source
    if not metric or source is None:
        missing = METRIC_NAME_LABEL if not metric else mapping.source_label
        return _describe(metric, labels), None, {}, f"no {missing} label"
    return metric, source, labels, ""


def _label(encoded: bytes) -> tuple[str, str]:
    try:
        label = remote_write_pb2.Label.FromString(encoded)
    except DecodeError as error:
        msg = f"body is not a prometheus.WriteRequest: bad label: {error}"
        raise ProtocolError(msg) from None
    return label.name, label.value


def _describe(metric: str | None, labels: dict[str, str]) -> str:
    pairs = ([(METRIC_NAME_LABEL, metric)] if metric else []) + list(labels.items())
    text = "{" + ", ".join(f"{name}={value!r}" for name, value in pairs) + "}"
    return text if len(text) <= _DESCRIPTION_MAX else text[: _DESCRIPTION_MAX - 3] + "..."
