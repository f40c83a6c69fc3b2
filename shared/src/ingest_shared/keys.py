"""The only place Redis key names and stream field names are built.

Series keys put ``{metric}`` or ``{metric|source}`` in a hash tag so a raw series and its
rollup always share a slot on Redis Cluster (TS.CREATERULE needs both on one node).
"""

from __future__ import annotations

from dataclasses import dataclass

# Stream entry fields, as the tutorial writes them.
FIELD_SOURCE = b"source"
FIELD_METRIC = b"metric"
FIELD_VALUE = b"value"
FIELD_OCCURRED_AT = b"occurredAt"

# Dead-letter entry fields.
DL_MESSAGE_ID = "messageId"
DL_REASON = "reason"
DL_PAYLOAD = "payload"
DL_CONSUMER = "consumer"
DL_FAILED_AT = "failedAt"

# Labels on every series, for TS.MGET/TS.MRANGE FILTER.
LABEL_METRIC = "metric"
LABEL_SOURCE = "source"
LABEL_KIND = "kind"
KIND_RAW = "raw"
KIND_ROLLUP = "rollup"
KIND_SOURCE_RAW = "source-raw"
KIND_SOURCE_ROLLUP = "source-rollup"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment; build it once from the settings and pass it down."""

    stream: str
    dead_letter: str
    metrics: str
    series_prefix: str = "telemetry:ts"

    def raw(self, metric: str) -> str:
        """The per-metric raw series (the tutorial's series: all sources together)."""
        return f"{self.series_prefix}:{{{metric}}}:raw"

    def rollup(self, metric: str) -> str:
        """The per-metric rollup series, fed by a TS.CREATERULE on :meth:`raw`."""
        return f"{self.series_prefix}:{{{metric}}}:rollup"

    def source_raw(self, metric: str, source: str) -> str:
        """The per-(metric, source) raw series: no two devices overwrite each other."""
        return f"{self.series_prefix}:{{{metric}|{source}}}:raw"

    def source_rollup(self, metric: str, source: str) -> str:
        """The rollup of :meth:`source_raw`."""
        return f"{self.series_prefix}:{{{metric}|{source}}}:rollup"

    # Keys the append function touches share the stream's slot (one FCALL, no CROSSSLOT).
    def idempotency(self, digest: str) -> str:
        """Stored response of one Idempotency-Key; ``digest`` is a hash, never the raw key."""
        return f"{{{self.stream}}}:idempotency:{digest}"

    def rate_limit(self, client_id: str) -> str:
        """The fixed-window request counter of one API client."""
        return f"{{{self.stream}}}:rate:{client_id}"
