"""Settings: read from the environment once, at a process entry point, then passed down.

Defaults are the original tutorial's where it had one, so its ``.env`` files keep working.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.keys import AGGREGATIONS, Keys, Rollup
from ingest_shared.redis_client import RedisTls

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ingest_shared.redis_client import TlsVerify

_NAME = re.compile(r"\A[A-Za-z0-9_.:@/-]{1,128}\Z")
_KEY = re.compile(r"\A[^\s{}]{1,256}\Z")
# A tag, label or attribute name a protocol mapping setting may list (OTLP's have dots).
_LABEL_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.:/\-]{0,127}\Z")
_MAX_NAMES = 16
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_REDIS_MODES = ("auto", "standalone", "cluster")
# INGEST_READ_CACHE_MS unset: each dashboard query computed at most about once a second
# however many dashboards poll it, and never older than half a 2 s refresh.
READ_CACHE_MS = 1_000


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of both services; see ``.env.example`` for the variable names."""

    redis_url: str = "redis://localhost:6379/0"
    # A replica of it that the read side queries instead (None: REDIS_URL serves reads too).
    read_redis_url: str | None = None
    redis_tls: RedisTls = field(default_factory=RedisTls)
    stream_key: str = "telemetry:events"
    dead_letter_key: str = "telemetry:events:dead-letter"
    consumer_group: str = "telemetry-workers"
    metrics_key: str = "telemetry:metrics"
    series_prefix: str = "telemetry:ts"
    key_prefix: str = "telemetry:"
    # auto: detected at the entry point (INFO cluster) and replaced by what was found.
    redis_mode: str = "standalone"
    # Eight streams, each owned by one worker at a time: up to 8 workers share the load with
    # one writer per series (1 keeps the unsharded names of earlier releases).
    stream_shards: int = 8
    consumer_idle_cleanup_ms: int = 3_600_000
    rollup_bucket_ms: int = 60_000
    retention_ms: int = 86_400_000
    rollup_retention_ms: int = 2_592_000_000
    batch_size: int = 500
    block_ms: int = 2_000
    claim_idle_ms: int = 60_000
    claim_interval_ms: int = 5_000
    max_deliveries: int = 5
    consumer_name: str = "worker"
    max_clock_skew_ms: int = 300_000
    shutdown_grace_s: float = 10.0
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # load_settings resolves INGEST_HTTP_WORKERS=auto (its default) with auto_http_workers().
    http_workers: int = 1
    # HTTP limits against hostile clients, per producer process (ingest_producer.serving).
    http_max_header_bytes: int = 16_384
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keepalive_s: int = 5
    http_max_connections: int = 4_096
    worker_http_host: str = "127.0.0.1"
    worker_http_port: int = 9100
    metrics_enabled: bool = True
    max_entry_bytes: int = 65_536
    log_level: str = "info"
    log_format: str = "auto"
    # The production edge: batches, auth, rate limits, backpressure, durability, trimming.
    max_body_bytes: int = 1_048_576
    max_batch: int = 10_000
    write_keys: frozenset[str] = field(default=frozenset(), repr=False)
    read_keys: frozenset[str] = field(default=frozenset(), repr=False)
    rate_limit: int = 0
    rate_window_ms: int = 1_000
    max_backlog: int = 1_000_000
    durability: str = "none"
    durability_replicas: int = 0
    durability_timeout_ms: int = 1_000
    idempotency_ttl_s: int = 86_400
    stream_keep: int = 10_000
    trim_interval_ms: int = 10_000
    # The read side: rollups (empty: INGEST_ROLLUPS unset, see rollup_rules), query limits.
    rollups: tuple[Rollup, ...] = ()
    max_points: int = 5_000
    stale_after_ms: int = 300_000
    dead_letter_maxlen: int = 100_000
    # Read isolation (ingest_producer.reading.isolation): how long the dashboard's and the
    # summary's answers are shared by every producer process (0 = not cached; off in Settings
    # built in code, so a read sees the writes before it; READ_CACHE_MS when the variable is
    # unset), and how many Redis-heavy reads one process runs at once.
    read_cache_ms: int = 0
    read_concurrency: int = 2
    # Reads (of any kind) one producer process starts per second; more wait their turn.
    read_rate: int = 200
    # Agent protocols (ingest_producer.agent_routes): how a line, series or resource names its
    # source, and the largest body a protocol route takes, as sent and once decompressed.
    influx_source_tags: tuple[str, ...] = ("host", "device_id", "entity_id", "source")
    influx_default_source: str | None = None
    prometheus_source_label: str = "instance"
    otlp_source_attributes: tuple[str, ...] = ("host.name", "service.instance.id", "device.id")
    protocol_max_bytes: int = 32 * 1024 * 1024
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto the producer believes (uvicorn's
    # forwarded_allow_ips): addresses or networks, "*" for any; none by default.
    trusted_proxies: tuple[str, ...] = ()
    # Cardinality caps (ingest_producer.cardinality), 0 = none: distinct device series (one per
    # metric, source and label set; ~14 KB of Redis each with the default rollup), per write
    # key, and distinct metric names (each adds a partial per shard and a dashboard chart).
    max_series: int = 100_000
    max_series_per_key: int = 0
    max_metrics: int = 5_000

    @property
    def rollup_rules(self) -> tuple[Rollup, ...]:
        """The rollups in force: INGEST_ROLLUPS, else the tutorial's avg:INGEST_ROLLUP_BUCKET_MS."""
        return self.rollups or (Rollup("avg", self.rollup_bucket_ms),)

    @property
    def keys(self) -> Keys:
        """The key layout these settings name."""
        return Keys(
            stream=self.stream_key,
            dead_letter=self.dead_letter_key,
            metrics=self.metrics_key,
            series_prefix=self.series_prefix,
            rollups=self.rollup_rules,
            prefix=self.key_prefix,
            stream_shards=self.stream_shards,
            cluster=self.redis_mode == "cluster",
        )


def default_consumer_name() -> str:
    """``hostname-pid``: unique per container and per process, stable across one run."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse the environment; raise ConfigurationError naming the first bad variable."""
    env = os.environ if environ is None else environ
    d = Settings()
    rate_limit, rate_window_ms = _rate(env, "INGEST_RATE_LIMIT")
    durability, replicas = _durability(env, "INGEST_DURABILITY")
    redis_url = _url(env, "REDIS_URL", d.redis_url)
    return Settings(
        redis_url=redis_url,
        read_redis_url=_optional_url(env, "INGEST_READ_REDIS_URL"),
        redis_tls=_redis_tls(env, redis_url),
        stream_key=_text(env, "INGEST_STREAM_KEY", d.stream_key, _KEY),
        dead_letter_key=_text(env, "INGEST_DEAD_LETTER_KEY", d.dead_letter_key, _KEY),
        consumer_group=_text(env, "INGEST_CONSUMER_GROUP", d.consumer_group, _NAME),
        metrics_key=_text(env, "INGEST_METRICS_KEY", d.metrics_key, _KEY),
        series_prefix=_text(env, "INGEST_SERIES_PREFIX", d.series_prefix, _KEY),
        key_prefix=_text(env, "INGEST_KEY_PREFIX", d.key_prefix, _KEY),
        redis_mode=_choice(env, "INGEST_REDIS_MODE", "auto", _REDIS_MODES),
        stream_shards=_int(env, "INGEST_STREAM_SHARDS", d.stream_shards, 1, 1_024),
        consumer_idle_cleanup_ms=_int(
            env, "INGEST_CONSUMER_IDLE_CLEANUP_MS", d.consumer_idle_cleanup_ms, 1_000
        ),
        rollup_bucket_ms=_int(env, "INGEST_ROLLUP_BUCKET_MS", d.rollup_bucket_ms, 1),
        retention_ms=_int(env, "INGEST_RETENTION_MS", d.retention_ms, 1),
        rollup_retention_ms=_int(env, "INGEST_ROLLUP_RETENTION_MS", d.rollup_retention_ms, 0),
        batch_size=_int(env, "INGEST_BATCH_SIZE", d.batch_size, 1, 100_000),
        block_ms=_int(env, "INGEST_BLOCK_MS", d.block_ms, 1, 600_000),
        claim_idle_ms=_int(env, "INGEST_CLAIM_IDLE_MS", d.claim_idle_ms, 1),
        claim_interval_ms=_int(env, "INGEST_CLAIM_INTERVAL_MS", d.claim_interval_ms, 10),
        max_deliveries=_int(env, "INGEST_MAX_DELIVERIES", d.max_deliveries, 1, 1_000),
        consumer_name=_text(env, "INGEST_CONSUMER_NAME", default_consumer_name(), _NAME),
        max_clock_skew_ms=_int(env, "INGEST_MAX_CLOCK_SKEW_MS", d.max_clock_skew_ms, 0),
        shutdown_grace_s=_float(env, "INGEST_SHUTDOWN_GRACE_S", d.shutdown_grace_s),
        http_host=_text(env, "INGEST_HTTP_HOST", d.http_host, _KEY),
        http_port=_int(env, "INGEST_HTTP_PORT", d.http_port, 0, 65_535),
        http_workers=_http_workers(env, "INGEST_HTTP_WORKERS"),
        http_max_header_bytes=_int(
            env, "INGEST_HTTP_MAX_HEADER_BYTES", d.http_max_header_bytes, 1_024, 1_048_576
        ),
        http_header_timeout_s=_seconds(
            env, "INGEST_HTTP_HEADER_TIMEOUT_S", d.http_header_timeout_s
        ),
        http_body_timeout_s=_seconds(env, "INGEST_HTTP_BODY_TIMEOUT_S", d.http_body_timeout_s),
        http_keepalive_s=_int(env, "INGEST_HTTP_KEEPALIVE_S", d.http_keepalive_s, 1, 3_600),
        http_max_connections=_int(
            env, "INGEST_HTTP_MAX_CONNECTIONS", d.http_max_connections, 16, 1_000_000
        ),
        worker_http_host=_text(env, "INGEST_WORKER_HTTP_HOST", d.worker_http_host, _KEY),
        worker_http_port=_int(env, "INGEST_WORKER_HTTP_PORT", d.worker_http_port, 0, 65_535),
        metrics_enabled=_choice(env, "INGEST_METRICS", "on", ("on", "off")) == "on",
        max_entry_bytes=_int(env, "INGEST_MAX_ENTRY_BYTES", d.max_entry_bytes, 0),
        log_level=_choice(env, "INGEST_LOG_LEVEL", d.log_level, _LOG_LEVELS),
        log_format=_choice(env, "INGEST_LOG_FORMAT", d.log_format, _LOG_FORMATS),
        max_body_bytes=_int(env, "INGEST_MAX_BODY_BYTES", d.max_body_bytes, 1_024),
        max_batch=_int(env, "INGEST_MAX_BATCH", d.max_batch, 1, 1_000_000),
        write_keys=_secrets(env, "INGEST_API_KEYS"),
        read_keys=_secrets(env, "INGEST_READ_KEYS"),
        rate_limit=rate_limit,
        rate_window_ms=rate_window_ms,
        max_backlog=_int(env, "INGEST_MAX_BACKLOG", d.max_backlog, 1),
        durability=durability,
        durability_replicas=replicas,
        durability_timeout_ms=_int(env, "INGEST_DURABILITY_TIMEOUT_MS", 1_000, 1, 60_000),
        idempotency_ttl_s=_int(env, "INGEST_IDEMPOTENCY_TTL_S", d.idempotency_ttl_s, 1),
        stream_keep=_int(env, "INGEST_STREAM_KEEP", d.stream_keep, 0),
        trim_interval_ms=_int(env, "INGEST_TRIM_INTERVAL_MS", d.trim_interval_ms, 100),
        rollups=_rollups(env, "INGEST_ROLLUPS"),
        max_points=_int(env, "INGEST_MAX_POINTS", d.max_points, 1, 1_000_000),
        stale_after_ms=_int(env, "INGEST_STALE_AFTER_MS", d.stale_after_ms, 1),
        dead_letter_maxlen=_int(env, "INGEST_DEAD_LETTER_MAXLEN", d.dead_letter_maxlen, 1),
        read_cache_ms=_int(env, "INGEST_READ_CACHE_MS", READ_CACHE_MS, 0, 60_000),
        read_concurrency=_int(env, "INGEST_READ_CONCURRENCY", d.read_concurrency, 1, 1_024),
        read_rate=_int(env, "INGEST_READ_RATE", d.read_rate, 0, 1_000_000),
        influx_source_tags=_names(env, "INGEST_INFLUX_SOURCE_TAGS", d.influx_source_tags),
        influx_default_source=_optional_text(env, "INGEST_INFLUX_DEFAULT_SOURCE", _NAME),
        prometheus_source_label=_text(
            env, "INGEST_PROMETHEUS_SOURCE_LABEL", d.prometheus_source_label, _LABEL_NAME
        ),
        otlp_source_attributes=_names(
            env, "INGEST_OTLP_SOURCE_ATTRIBUTES", d.otlp_source_attributes
        ),
        # At least 1 MiB; agents send up to ~20 MiB (issue 19), hence the 32 MiB default.
        protocol_max_bytes=_int(
            env, "INGEST_PROTOCOL_MAX_BYTES", d.protocol_max_bytes, 1_048_576, 1_073_741_824
        ),
        trusted_proxies=_trusted_proxies(env, "INGEST_TRUSTED_PROXIES"),
        max_series=_int(env, "INGEST_MAX_SERIES", d.max_series, 0),
        max_series_per_key=_int(env, "INGEST_MAX_SERIES_PER_KEY", d.max_series_per_key, 0),
        max_metrics=_int(env, "INGEST_MAX_METRICS", d.max_metrics, 0),
    )


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name) or default
    if not value.startswith(("redis://", "rediss://", "unix://")):
        msg = f"{name} must start with redis://, rediss:// or unix://"
        raise ConfigurationError(msg)
    return value


def _optional_url(env: Mapping[str, str], name: str) -> str | None:
    return None if _raw(env, name) is None else _url(env, name, "")


def _text(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str]) -> str:
    value = _raw(env, name) or default
    if not pattern.match(value):
        msg = f"{name}={value!r} is not allowed (expected {pattern.pattern})"
        raise ConfigurationError(msg)
    return value


def _optional_text(env: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> str | None:
    """Like :func:`_text`, but unset (or blank) is None."""
    value = _raw(env, name)
    if value is not None and not pattern.match(value):
        msg = f"{name}={value!r} is not allowed (expected {pattern.pattern})"
        raise ConfigurationError(msg)
    return value


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of 1 to 16 distinct tag, label or attribute names, in order."""
    raw = _raw(env, name)
    if raw is None:
        return default
    names = tuple(item.strip() for item in raw.split(","))
    if not all(_LABEL_NAME.match(item) for item in names):
        msg = f"{name}={raw!r}: each comma-separated name must match {_LABEL_NAME.pattern}"
        raise ConfigurationError(msg)
    if len(set(names)) != len(names) or len(names) > _MAX_NAMES:
        msg = f"{name}={raw!r}: at most {_MAX_NAMES} names, none listed twice"
        raise ConfigurationError(msg)
    return names


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        msg = f"{name}={raw!r} is not an integer"
        raise ConfigurationError(msg) from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        msg = f"{name}={value} must be {bounds}"
        raise ConfigurationError(msg)
    return value


_MAX_HTTP_WORKERS = 64


def _http_workers(env: Mapping[str, str], name: str) -> int:
    """``auto`` (the default): :func:`auto_http_workers`; else a count from 1 to 64."""
    raw = _raw(env, name)
    if raw is None or raw.lower() == "auto":
        return auto_http_workers(usable_cpus())
    try:
        return _int(env, name, 1, 1, _MAX_HTTP_WORKERS)
    except ConfigurationError:
        msg = f"{name}={raw!r} must be auto or a number of processes from 1 to {_MAX_HTTP_WORKERS}"
        raise ConfigurationError(msg) from None


def auto_http_workers(cpus: int) -> int:
    """Producer processes for ``cpus`` usable CPUs: half of them, at least one.

    The other half is left to Redis and the workers, which share the machine in the default
    layout. Measured on 2 cores (``make bench``, scenarios 8 and 9): a second producer process
    gained only 1.2-1.3x on its own, at 12-13% fewer events per CPU-second, while the whole
    pipeline's limit was Redis and the worker, with the producer at about a quarter of a core.
    """
    return max(1, min(_MAX_HTTP_WORKERS, cpus // 2))


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))  # a 1.5-CPU quota counts as 2
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return max(1, cpus)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        msg = f"{name}={raw!r} is not a number"
        raise ConfigurationError(msg) from None
    if not 0 <= value < 3600:  # also rejects nan
        msg = f"{name}={raw} must be between 0 and 3600 seconds"
        raise ConfigurationError(msg)
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A timeout: more than 0 and less than 3600 seconds."""
    value = _float(env, name, default)
    if value <= 0:
        msg = f"{name}={value} must be more than 0 seconds"
        raise ConfigurationError(msg)
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_raw(env, name) or default).lower()
    if value not in choices:
        msg = f"{name}={value!r} must be one of {', '.join(choices)}"
        raise ConfigurationError(msg)
    return value


_RATE = re.compile(r"\A(\d+)\s*/\s*(\d*)\s*(ms|s|m|h)\Z")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}


def _rate(env: Mapping[str, str], name: str) -> tuple[int, int]:
    """``1000/s``, ``50/10s`` or ``60000/m`` -> (events, window ms); unset -> (0, 1000)."""
    raw = _raw(env, name)
    if raw is None:
        return 0, 1_000
    match = _RATE.match(raw.lower())
    if not match or int(match[1]) < 1:
        msg = f"{name}={raw!r} must look like 1000/s, 50/10s or 60000/m"
        raise ConfigurationError(msg)
    window = int(match[2] or 1) * _UNIT_MS[match[3]]
    if window < 1:
        msg = f"{name}={raw!r} has an empty window"
        raise ConfigurationError(msg)
    return int(match[1]), window


_MAX_ROLLUPS = 16


def _rollups(env: Mapping[str, str], name: str) -> tuple[Rollup, ...]:
    """``avg:60000,max:3600000``: 1 to 16 distinct (aggregation, bucket ms); unset -> ()."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    rollups: list[Rollup] = []
    for item in raw.split(","):
        agg, _, bucket = (part.strip() for part in item.strip().lower().partition(":"))
        bucket = bucket.replace("_", "")
        digits = bucket.isascii() and bucket.isdigit()
        if agg not in AGGREGATIONS or not digits or int(bucket) < 1:
            msg = (
                f"{name}: {item.strip()!r} must be <aggregation>:<bucket ms>, the aggregation "
                f"one of {', '.join(AGGREGATIONS)} and the bucket >= 1"
            )
            raise ConfigurationError(msg)
        rollup = Rollup(agg, int(bucket))
        if rollup in rollups:
            msg = f"{name}: {rollup.agg}:{rollup.bucket_ms} is listed twice"
            raise ConfigurationError(msg)
        rollups.append(rollup)
    if len(rollups) > _MAX_ROLLUPS:
        msg = f"{name}: at most {_MAX_ROLLUPS} rollups (got {len(rollups)})"
        raise ConfigurationError(msg)
    return tuple(rollups)


def _durability(env: Mapping[str, str], name: str) -> tuple[str, int]:
    """``none`` | ``aof`` | ``replicas:N``."""
    raw = (_raw(env, name) or "none").lower()
    if raw in ("none", "aof"):
        return raw, 0
    kind, _, count = raw.partition(":")
    if kind == "replicas" and count.isdigit() and int(count) >= 1:
        return "replicas", int(count)
    msg = f"{name}={raw!r} must be none, aof or replicas:N"
    raise ConfigurationError(msg)


def _secrets(env: Mapping[str, str], name: str) -> frozenset[str]:
    """Comma-separated keys from ``NAME`` and/or one key per line from the file ``NAME_FILE``."""
    found = [key.strip() for key in (env.get(name) or "").split(",")]
    path = _raw(env, f"{name}_FILE")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"{name}_FILE={path!r} cannot be read ({exc.strerror})"
            raise ConfigurationError(msg) from None
        found += [line.strip() for line in text.splitlines() if not line.startswith("#")]
    keys = frozenset(key for key in found if key)
    if any(len(key) < 16 for key in keys):
        msg = f"{name}: every key must have at least 16 characters"
        raise ConfigurationError(msg)
    return keys


_TLS_FILES = ("INGEST_REDIS_TLS_CA_FILE", "INGEST_REDIS_TLS_CERT_FILE", "INGEST_REDIS_TLS_KEY_FILE")
_TLS_VERIFY: dict[str, TlsVerify] = {"full": "full", "ca": "ca", "none": "none"}


def _redis_tls(env: Mapping[str, str], url: str) -> RedisTls:
    """``INGEST_REDIS_TLS_*``, for ``rediss://`` only: the one place TLS is configured.

    The files are loaded here as the client will load them, so a missing mount or a PEM mix-up
    stops the process at start, naming the variable, instead of failing every connection.
    """
    ca, cert, key = (_readable_file(env, name) for name in _TLS_FILES)
    verify_raw = _raw(env, "INGEST_REDIS_TLS_VERIFY")
    verify = _TLS_VERIFY[_choice(env, "INGEST_REDIS_TLS_VERIFY", "full", tuple(_TLS_VERIFY))]
    if any(name.lower().startswith("ssl_") for name, _ in parse_qsl(urlsplit(url).query)):
        msg = "REDIS_URL: set TLS options with INGEST_REDIS_TLS_*, not ssl_* query parameters"
        raise ConfigurationError(msg)
    given = [n for n, v in zip(_TLS_FILES, (ca, cert, key), strict=True) if v is not None]
    given += ["INGEST_REDIS_TLS_VERIFY"] if verify_raw is not None else []
    if given and not url.startswith("rediss://"):
        msg = f"{given[0]} is set but REDIS_URL does not start with rediss://, so TLS is off"
        raise ConfigurationError(msg)
    if key is not None and cert is None:
        msg = "INGEST_REDIS_TLS_KEY_FILE is set without INGEST_REDIS_TLS_CERT_FILE"
        raise ConfigurationError(msg)
    if ca is not None and verify == "none":
        msg = "INGEST_REDIS_TLS_CA_FILE is set but INGEST_REDIS_TLS_VERIFY=none would ignore it"
        raise ConfigurationError(msg)
    _load_tls_files(ca, cert, key)
    return RedisTls(ca_file=ca, cert_file=cert, key_file=key, verify=verify)


def _readable_file(env: Mapping[str, str], name: str) -> str | None:
    path = _raw(env, name)
    if path is None:
        return None
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        msg = f"{name}={path!r} cannot be read ({exc.strerror})"
        raise ConfigurationError(msg) from None
    return path


def _load_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            msg = f"INGEST_REDIS_TLS_CA_FILE={ca!r} holds no PEM certificate ({exc.reason})"
            raise ConfigurationError(msg) from None
    if cert is None:
        return
    # Without a key file, the key is expected in the certificate file (one PEM with both).
    named = f"INGEST_REDIS_TLS_CERT_FILE={cert!r}"
    if key is not None:
        named += f" and INGEST_REDIS_TLS_KEY_FILE={key!r}"

    def encrypted_key() -> bytes:
        # Without this callback OpenSSL would prompt on the terminal and hang the service.
        msg = f"{named}: the private key is encrypted; give an unencrypted one"
        raise ConfigurationError(msg)

    try:
        context.load_cert_chain(cert, key, password=encrypted_key)
    except ssl.SSLError as exc:
        expected = "a PEM certificate and its private key"
        if key is None:
            expected += " (or set INGEST_REDIS_TLS_KEY_FILE to the key's own file)"
        msg = f"{named}: not {expected}: {exc.reason or exc}"
        raise ConfigurationError(msg) from None


def _trusted_proxies(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (``10.0.0.0/8``), or ``*``; unset: none."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    if raw == "*":
        return ("*",)
    proxies: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            found = ipaddress.ip_network(item) if "/" in item else ipaddress.ip_address(item)
            proxies.append(str(found))
        except ValueError:
            msg = f"{name}: {item!r} is not an IP address or network (e.g. 10.0.0.0/8), or *"
            raise ConfigurationError(msg) from None
    return tuple(proxies)
