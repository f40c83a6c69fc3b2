"""Every Prometheus metric of the worker, named once (served by ``ingest_worker.monitor``).

Updated per batch, never per event: the batch loop is the hot path. The event-age histogram
observes the oldest entry of each batch (its stream id carries the enqueue time), the figure
an alert on delay needs, for one observation per batch.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ingest_shared.processor import DEAD_LETTER_REASONS

TRANSIENT = "transient"
UNEXPECTED = "unexpected"

EVENTS_PROCESSED = Counter(
    "ingest_worker_events_processed_total", "Events stored in TimeSeries (both of their series)"
)
SAMPLES_STORED = Counter(
    "ingest_worker_samples_stored_total",
    "Samples written to TimeSeries: two per event (per-metric and per-device series)",
)
DEAD_LETTERED = Counter(
    "ingest_worker_dead_lettered_total",
    "Entries moved to the dead-letter stream, by reason class",
    ["reason"],
)
RECLAIMED = Counter(
    "ingest_worker_reclaimed_total", "Entries claimed from consumers idle past the claim time"
)
ACKED = Counter("ingest_worker_acked_total", "Entries acknowledged (XACK)")
GROUP_RECREATED = Counter(
    "ingest_worker_group_recreated_total",
    "Times the consumer group was found missing (Redis restarted empty, flushed) and recreated",
)
REDIS_ERRORS = Counter(
    "ingest_worker_redis_errors_total",
    "Failed Redis steps, by kind: transient (retried with backoff) or unexpected",
    ["kind"],
)
BATCH_SIZE = Histogram(
    "ingest_worker_batch_size",
    "Entries per processed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_DURATION = Histogram(
    "ingest_worker_batch_duration_seconds",
    "Time to store, dead-letter and acknowledge one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_AGE = Histogram(
    "ingest_worker_event_age_seconds",
    "Age of the oldest event of each batch when it was stored (enqueue to stored)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
LAST_PROGRESS = Gauge(
    "ingest_worker_last_progress_timestamp_seconds",
    "Unix time of the worker's last successful Redis step (a read that returned counts)",
)

# Every labelled series exists from the start at 0: an alert on increase() would not see the
# first dead letter of a series that appears at 1.
for _reason in DEAD_LETTER_REASONS:
    DEAD_LETTERED.labels(_reason)
for _kind in (TRANSIENT, UNEXPECTED):
    REDIS_ERRORS.labels(_kind)
