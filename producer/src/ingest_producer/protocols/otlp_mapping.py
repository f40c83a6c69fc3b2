"""How OTLP metrics map onto samples; both encodings' readers (``otlp_wire`` for protobuf,
``otlp`` for JSON) feed one ``Collector``.

Mapping (``OtlpMapping``):

- source: the first of ``source_attributes`` (default ``host.name``, ``service.instance.id``,
  ``device.id``) that the resource has as a non-empty scalar; none -> every point of that
  resource is rejected, unless ``default_source`` is set.
- labels: the resource attributes named in ``resource_labels`` (default ``service.name``,
  ``service.namespace``, ``service.instance.id``; the one chosen as source excluded), so two
  services or two processes on one host never fold into one series; then every data point
  attribute (a point attribute wins over a resource one). Other resource attributes and all
  scope attributes are dropped: they describe the SDK and the library, and taking them all
  would leave the label count unbounded. Note that recent SDKs generate a random
  ``service.instance.id`` per process start, so with ``host.name`` as source a restart starts
  new series; leave it out of ``resource_labels`` where that matters more than folding.
  Attribute values become strings (``true``/``false``, decimal integers, ``repr`` of doubles);
  array, kvlist and bytes point attributes are dropped and counted as
  ``non_scalar_attribute``.
- Gauge points are samples as they are. Sum points carry the label ``temporality`` =
  ``delta`` or ``cumulative`` (overriding an attribute of that name), so a delta and a
  cumulative series of one name never mix and cumulative counters are never averaged as
  gauges; a Sum with unspecified temporality is rejected.
- Histogram, exponential histogram and summary points are rejected per metric with their
  point count (the route reports the total as ``partial_success.rejected_data_points``).
- NaN and +-Inf values and points flagged "no recorded value" are skipped and counted; a
  point with no value at all is rejected. ``time_unix_nano`` becomes ms (0 -> None, the time
  of receipt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from ingest_producer.protocols.result import (
    CUMULATIVE,
    DELTA,
    SKIP_INFINITY,
    SKIP_NAN,
    SKIP_NO_RECORDED_VALUE,
    SKIP_NON_SCALAR_ATTRIBUTE,
    TEMPORALITY_LABEL,
    Decoded,
    ProtocolSample,
    Rejected,
)

MAX_FLOAT: Final = 1.7976931348623157e308
NS_PER_MS: Final = 1_000_000
FLAG_NO_RECORDED_VALUE: Final = 1
# AggregationTemporality: 1 = DELTA, 2 = CUMULATIVE (0, unspecified, is invalid for a Sum).
TEMPORALITIES: Final[dict[int | str, str]] = {
    1: DELTA,
    2: CUMULATIVE,
    "1": DELTA,
    "2": CUMULATIVE,
    "AGGREGATION_TEMPORALITY_DELTA": DELTA,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": CUMULATIVE,
}
REFUSED_KINDS: Final = {
    "histogram": "histogram",
    "exponential_histogram": "exponential histogram",
    "summary": "summary",
}
_DESCRIPTION_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class OtlpMapping:
    """Which resource attributes name the source and which become labels."""

    source_attributes: tuple[str, ...] = ("host.name", "service.instance.id", "device.id")
    resource_labels: tuple[str, ...] = ("service.name", "service.namespace", "service.instance.id")
    default_source: str | None = None


DEFAULT_MAPPING: Final = OtlpMapping()


class Series(NamedTuple):
    """What the points of one metric of one resource share."""

    metric: str
    source: str
    base: dict[str, str]
    temporality: str | None

    def labels(self, attributes: dict[str, str]) -> dict[str, str]:
        """A point's labels: the resource's, its attributes, then the temporality."""
        if not self.base and self.temporality is None:
            return attributes
        labels = {**self.base, **attributes}
        if self.temporality is not None:
            labels[TEMPORALITY_LABEL] = self.temporality
        return labels


class Collector:
    """What one request decodes to, built up by either encoding's reader."""

    def __init__(self, mapping: OtlpMapping) -> None:
        self.mapping = mapping
        # The resource attributes ever read: bounded by the mapping's size.
        self.labels = frozenset(mapping.resource_labels)
        self.wanted = self.labels | frozenset(mapping.source_attributes)
        self.result = Decoded()
        self.nan = self.infinite = self.no_recorded_value = self.non_scalar = 0

    def resource(self, attributes: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """The source and the labels every point of a resource carries, from its wanted
        attributes."""
        chosen, source = "", self.mapping.default_source
        for name in self.mapping.source_attributes:
            if attributes.get(name):
                chosen, source = name, attributes[name]
                break
        labels = {
            key: value for key, value in attributes.items() if key in self.labels and key != chosen
        }
        return source, labels

    def point(
        self, series: Series, attributes: dict[str, str], value: float, flags: int, time_ns: int
    ) -> None:
        """One data point with a value: a sample, or counted when the value is unusable."""
        if flags & FLAG_NO_RECORDED_VALUE or not -MAX_FLOAT <= value <= MAX_FLOAT:
            self.unusable(value, flags)
        else:
            timestamp_ms = time_ns // NS_PER_MS if time_ns else None
            labels = series.labels(attributes)
            sample = ProtocolSample(series.metric, series.source, labels, value, timestamp_ms)
            self.result.samples.append(sample)

    def unusable(self, value: float, flags: int) -> None:
        """Count a point that has no usable value: no recorded value, NaN or infinite."""
        if flags & FLAG_NO_RECORDED_VALUE:
            self.no_recorded_value += 1
        elif math.isinf(value):
            self.infinite += 1
        else:
            self.nan += 1

    def no_source(self, attributes: dict[str, str], count: int) -> None:
        """Refuse the ``count`` points of a resource that names no source."""
        if count:
            wanted = ", ".join(self.mapping.source_attributes)
            reason = f"resource has no source attribute (one of {wanted})"
            self.refuse(f"resource {_describe(attributes)}", reason, count)

    def no_value(self, metric: str, count: int) -> None:
        """Refuse the ``count`` points of a metric that have no value at all."""
        self.refuse(f"metric {metric!r}", "data point has no value", count)

    def unspecified_temporality(self, metric: str, count: int) -> None:
        """Refuse the ``count`` points of a Sum without aggregation temporality."""
        if count:
            self.refuse(f"metric {metric!r}", "sum with unspecified aggregation temporality", count)

    def refuse_kind(self, metric: str, kind: str, count: int) -> None:
        """Refuse the ``count`` points of a histogram, exponential histogram or summary."""
        if count:
            what = REFUSED_KINDS[kind]
            self.refuse(f"metric {metric!r}", f"{what} data points are not supported", count)

    def refuse(self, item: str, reason: str, count: int) -> None:
        """Refuse ``count`` points described by ``item``."""
        self.result.rejected.append(Rejected(item[:_DESCRIPTION_MAX], reason, count))

    def finish(self) -> Decoded:
        """The result, with the skipped counts filled in."""
        skipped = self.result.skipped
        for reason, count in (
            (SKIP_NAN, self.nan),
            (SKIP_INFINITY, self.infinite),
            (SKIP_NO_RECORDED_VALUE, self.no_recorded_value),
            (SKIP_NON_SCALAR_ATTRIBUTE, self.non_scalar),
        ):
            if count:
                skipped[reason] = count
        return self.result


def _describe(attributes: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name}={value!r}" for name, value in attributes.items()) + "}"
