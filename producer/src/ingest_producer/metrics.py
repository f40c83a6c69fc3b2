"""Every Prometheus metric of the producer, named once; ``GET /metrics`` serves them.

With several uvicorn processes (``INGEST_HTTP_WORKERS`` > 1) the CLI points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the processes start, so counters and
histograms are summed over all of them. The queue gauges are sampled by each process's backlog
monitor and exported once (the most recent sample), never per process and never per request.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "ingest_producer_requests_total",
    "HTTP requests by route template, method and status code",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "ingest_producer_request_duration_seconds",
    "Time from the request reaching the app to its response being sent, by route template",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_ACCEPTED = Counter(
    "ingest_producer_events_accepted_total", "Events appended to the stream (2xx answers)"
)
EVENTS_REJECTED = Counter(
    "ingest_producer_events_rejected_total",
    "Events of decoded requests that were refused, by reason: invalid (422), over_cap (422: "
    "a new series beyond a cardinality cap), rate_limited (429), conflict (409), unavailable "
    "(503: Redis failed), not_durable (503: the durability wait failed; they may be in the "
    "stream)",
    ["reason"],
)
REDIS_ERRORS = Counter(
    "ingest_producer_redis_errors_total",
    "Redis failures seen by requests, by kind: unavailable, out_of_memory, permission, "
    "moved, other",
    ["kind"],
)
BACKPRESSURE = Counter(
    "ingest_producer_backpressure_total",
    "Write requests refused with 503 because the backlog exceeded INGEST_MAX_BACKLOG",
)
RATE_LIMITED = Counter(
    "ingest_producer_rate_limited_total", "Write requests refused with 429 (INGEST_RATE_LIMIT)"
)
DURABILITY_FAILURES = Counter(
    "ingest_producer_durability_failures_total",
    "Appends whose WAITAOF/WAIT did not confirm in time (answered 503)",
)
PROTOCOL_SAMPLES = Counter(
    "ingest_producer_protocol_samples_total",
    "Samples of agent protocol requests (influx, prometheus, otlp), by outcome: enqueued; "
    "refused (a bad line, series or point, or a sample failing the event rules; InfluxDB's "
    "are dead-lettered); skipped (dropped by design: string fields, NaN, stale markers, ...)",
    ["protocol", "outcome"],
)
SERIES_REFUSED = Counter(
    "ingest_producer_series_refused_total",
    "Events refused because their series would be new beyond a cap, by cap: max_series, "
    "max_metrics, max_series_per_key (INGEST_MAX_...)",
    ["cap"],
)
READ_CACHE = Counter(
    "ingest_producer_read_cache_total",
    "Answers of the shared read routes (summary, charts, metrics, sources) by route and "
    "outcome: hit (from the cache every process shares, INGEST_READ_CACHE_MS), joined (an "
    "identical query already in flight in this process), miss (computed from the series)",
    ["route", "outcome"],
)
READS_REJECTED = Counter(
    "ingest_producer_reads_rejected_total",
    "Read queries refused with 503 because INGEST_READ_CONCURRENCY were in flight in this "
    "process, by route",
    ["route"],
)
GROUP_RECREATED = Counter(
    "ingest_producer_group_recreated_total",
    "Times the backlog monitor found the consumer group missing and recreated it",
)


def _queue_gauge(name: str, documentation: str) -> Gauge:
    return Gauge(name, documentation, multiprocess_mode="mostrecent")


REGISTRY_SERIES = _queue_gauge(
    "ingest_registry_series", "Distinct device series admitted (INGEST_MAX_SERIES caps it)"
)
REGISTRY_METRICS = _queue_gauge(
    "ingest_registry_metrics", "Distinct metric names admitted (INGEST_MAX_METRICS caps it)"
)
READ_REPLICA_LAG_BYTES = _queue_gauge(
    "ingest_read_replica_lag_bytes",
    "How far the read replica (INGEST_READ_REDIS_URL) is behind the primary, in replication "
    "stream bytes",
)
READ_REPLICA_LINK_UP = _queue_gauge(
    "ingest_read_replica_link_up", "1 while the read replica's link to the primary is up"
)
QUEUE_LENGTH = _queue_gauge("ingest_queue_length", "Entries in the stream now (XLEN)")
QUEUE_ADDED = _queue_gauge(
    "ingest_queue_entries_added", "Entries ever appended to the stream (XINFO STREAM)"
)
QUEUE_PENDING = _queue_gauge(
    "ingest_queue_pending", "Entries delivered to a worker and not yet acknowledged"
)
QUEUE_LAG = _queue_gauge(
    "ingest_queue_lag",
    "Entries not yet delivered to any worker (the stream length where Redis cannot tell)",
)
QUEUE_BACKLOG = _queue_gauge(
    "ingest_queue_backlog", "lag + pending: what backpressure compares with INGEST_MAX_BACKLOG"
)
QUEUE_OLDEST_PENDING_AGE = _queue_gauge(
    "ingest_queue_oldest_pending_age_seconds",
    "Age of the oldest pending entry (0 when nothing is pending)",
)
QUEUE_CONSUMERS = _queue_gauge("ingest_queue_consumers", "Consumers in the workers' group")
DEAD_LETTER_LENGTH = _queue_gauge("ingest_dead_letter_length", "Entries in the dead-letter stream")
