"""Scenario 12: readers never slow ingest (issue 20).

24 h of samples from ``mixed_devices`` devices (2 metrics, one sample per device and metric
every 2 minutes) are written straight into the product's series: created by the worker's own
``setup_commands``, filled by a server-side script in time order (each device a few ms apart,
so the per-metric partial takes in-order samples too), so loading takes seconds, not a drain.
Then, paired in each repetition: single-event POST latency (wrk, ``SINGLE_CONNECTIONS``
connections) and gateway batches of 100 (events/s), first idle, then while ``mixed_readers``
wrk connections loop the heaviest reads (fleet charts over 24 h, stale sources, the summary,
a fleet 24 h range aggregated from raw samples). Targets: loaded p99 <= 2x idle, loaded
batches >= 0.9x idle. The producer runs as the product ships its read side (the read cache
and INGEST_READ_CONCURRENCY at their defaults); the readers' 503s are counted, not failures.
Then the same pairs once more on a producer whose queries read a replica (a second local
redis-server replicating the bench's: INGEST_READ_REDIS_URL), started after the first pairs
so it costs them nothing.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import redis
from redis.exceptions import ResponseError

from bench.config import PRODUCT_DB
from bench.context import SAMPLE_EVENT
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.prefill import now_ms
from bench.procs import HOST
from bench.scenarios.common import EVENTS_PATH, check_post, measure, reset_streams, scratch_figure
from ingest_devtools.localredis import LocalRedis
from ingest_shared.settings import load_settings
from ingest_shared.timeseries import RULE_EXISTS, SERIES_EXISTS, SeriesLayout, setup_commands

if TYPE_CHECKING:
    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure
    from ingest_shared.keys import Keys

METRICS = ("mixed-cpu", "mixed-temp")
STEP_MS = 120_000
SINGLE_CONNECTIONS = 8
BATCH_SIZE = 100
# Samples one script call writes (it blocks Redis meanwhile: a few tens of ms).
SAMPLES_PER_CALL = 20_000
# Readers start this long before a loaded measurement (the first answers fill the cache).
READERS_LEAD_S = 1.0

# KEYS: the devices' raw series, then the metric's partial. ARGV: first and last step, base ms,
# step ms, stagger ms. Time-major, so every series takes its samples in order.
LOAD_LUA = """
local devices = #KEYS - 1
local partial = KEYS[#KEYS]
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local base, step, stagger = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for i = first, last do
  for d = 1, devices do
    local ts = base + i * step + (d - 1) * stagger
    local value = (i * 7 + d * 13) % 100
    redis.call("TS.ADD", KEYS[d], ts, value)
    redis.call("TS.ADD", partial, ts, value)
  end
end
return last - first + 1
"""


def _source(device: int) -> str:
    return f"device-{device}"


def load(bench: Bench, keys: Keys, layout: SeriesLayout, devices: int, hours: float) -> int:
    """Create the series of ``devices`` x METRICS and fill ``hours`` of samples; the number
    of device samples written."""
    client = bench.client(PRODUCT_DB)
    pipe = client.pipeline(transaction=False)
    for metric in METRICS:
        for command in setup_commands(keys, layout, metric, None, keys.shards[0]):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        for device in range(devices):
            source = _source(device)
            shard = keys.shard_of_source(source)
            for command in setup_commands(keys, layout, metric, source, shard):
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    pipe.sadd(keys.metrics, *METRICS)
    for result in pipe.execute(raise_on_error=False):
        if isinstance(result, ResponseError) and str(result) not in (SERIES_EXISTS, RULE_EXISTS):
            raise result
    steps = int(hours * 3_600_000 // STEP_MS) - 1
    base = now_ms() - steps * STEP_MS
    stagger = STEP_MS // devices
    per_call = max(1, SAMPLES_PER_CALL // devices)
    script = client.register_script(LOAD_LUA)
    for metric in METRICS:
        # One shard in the bench's layout: every partial of a metric is the first shard's.
        series = [keys.source_raw(metric, _source(d)) for d in range(devices)]
        series.append(keys.metric_raw(metric, keys.shards[0]))
        for first in range(0, steps, per_call):
            last = min(steps, first + per_call) - 1
            script(keys=series, args=[first, last, base, STEP_MS, stagger])
    return steps * devices * len(METRICS)


def _read_paths() -> list[str]:
    day_ago = now_ms() - 86_400_000
    return [
        "/api/ingest/charts?window=24h",
        "/api/ingest/sources?stale=true",
        "/api/ingest/summary",
        # 10-minute buckets: no rollup matches, so Redis aggregates every device's raw series.
        f"/api/ingest/metrics/{METRICS[0]}/range?from={day_ago}&agg=avg&bucketMs=600000",
    ]


class Readers:
    """``connections`` wrk connections looping the read paths for ``duration_s``, in a thread."""

    def __init__(self, bench: Bench, server: Server, connections: int, duration_s: float):
        self.result: WrkResult | None = None
        self.error = ""
        wrk = bench.wrk

        def loop() -> None:
            try:
                assert wrk is not None
                self.result = run_wrk(
                    wrk, server.base_url, "read_mix.lua",
                    duration_s=duration_s, connections=connections, script_args=_read_paths(),
                )  # fmt: skip
            except (LoadGenError, OSError) as exc:
                self.error = str(exc)[:200]

        self._thread = threading.Thread(target=loop, name="bench-readers", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()


def _measure_pair(
    bench: Bench, server: Server, single: Figure, batch: Figure, scratch: Figure
) -> None:
    """One single-event run (its p99 into ``single``) and one batch run into ``batch``."""
    result = measure(bench, server, scratch, "post_event.lua", connections=SINGLE_CONNECTIONS)
    if result is None or result.ok_requests == 0:
        single.fail("single-event run failed")
        single.add(None)
    else:
        single.add(result.p99_ms, p50_ms=result.p50_ms, p99_ms=result.p99_ms)
    reset_streams(bench)
    measure(
        bench, server, batch, "post_batch.lua",
        connections=bench.config.batch_connections, script_args=[str(BATCH_SIZE)],
        per_request=BATCH_SIZE,
    )  # fmt: skip
    reset_streams(bench)


class _Figures:
    """The four figures of one producer set-up and their two targets."""

    def __init__(self, bench: Bench, suffix: str, title: str) -> None:
        cfg, results = bench.config, bench.results
        readers = cfg.mixed_readers
        self.single_idle = results.figure(
            f"mixed.single.idle{suffix}", 12,
            f"Single-event POST p99, idle, {SINGLE_CONNECTIONS} conns{title}", "ms",
        )  # fmt: skip
        self.single_loaded = results.figure(
            f"mixed.single.loaded{suffix}", 12,
            f"Single-event POST p99, {readers} readers looping{title}", "ms",
        )  # fmt: skip
        batch_label = f"Batches of {BATCH_SIZE}, {cfg.batch_connections} conns"
        self.batch_idle = results.figure(
            f"mixed.batch.idle{suffix}", 12, f"{batch_label}, idle{title}", "events/s"
        )
        self.batch_loaded = results.figure(
            f"mixed.batch.loaded{suffix}", 12, f"{batch_label}, {readers} readers looping{title}",
            "events/s",
        )  # fmt: skip
        results.target(
            f"mixed_p99{suffix}", "p99 with readers / idle", self.single_loaded.key, 2.0,
            comparison="<=", versus=self.single_idle.key, versus_label="idle",
        )  # fmt: skip
        results.target(
            f"mixed_batch{suffix}", "batches with readers / idle", self.batch_loaded.key, 0.9,
            versus=self.batch_idle.key, versus_label="idle",
        )  # fmt: skip

    def all(self) -> tuple[Figure, ...]:
        return (self.single_idle, self.single_loaded, self.batch_idle, self.batch_loaded)


def run(bench: Bench) -> None:
    cfg = bench.config
    primary = _Figures(bench, "", "")
    replicated = _Figures(bench, ".replica", ", queries on a replica")

    # Alone on the product database: other scenarios' workers and series would change the
    # reads' cost (scenario 10, after this one, flushes it again).
    bench.stop_all()
    bench.client(PRODUCT_DB).flushdb()
    settings = load_settings(bench.product_env())
    layout = SeriesLayout(settings.retention_ms, settings.rollup_retention_ms)
    log(f"scenario 12: loading {cfg.mixed_hours:g} h x {cfg.mixed_devices} devices")
    samples = load(bench, settings.keys, layout, cfg.mixed_devices, cfg.mixed_hours)
    log(f"  {samples:,} device samples (and as many in the per-metric series)")
    reads = _pairs(bench, bench.producer(1), primary, "producer-1p")
    bench.stop_all()
    replica = LocalRedis(
        bench.workdir / "replica",
        extra_args=["--replicaof", HOST, str(bench.redis_server.port)],
    ).start()
    try:
        _wait_synced(bench, replica)
        url = f"redis://{HOST}:{replica.port}/{PRODUCT_DB}"
        replica_reads = _pairs(
            bench, bench.replica_producer(url), replicated, "producer-1p-replica"
        )
    finally:
        bench.stop_all()
        replica.stop()
    bench.results.data["mixed"] = {
        "devices": cfg.mixed_devices,
        "hours": cfg.mixed_hours,
        "device_samples": samples,
        "readers": cfg.mixed_readers,
        "read_paths": _read_paths(),
        "reads": reads,
        "reads_on_replica": replica_reads,
    }


def _wait_synced(bench: Bench, replica: LocalRedis, timeout_s: float = 120.0) -> None:
    """Until the replica's link is up and it holds everything the primary sent."""
    client = redis.Redis(host=HOST, port=replica.port, decode_responses=True)
    primary = bench.client(PRODUCT_DB)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            theirs = client.info("replication")
            mine = primary.info("replication")
            if theirs.get("master_link_status") == "up" and int(
                theirs.get("slave_repl_offset", -1)
            ) >= int(mine["master_repl_offset"]):
                return
            time.sleep(0.2)
    finally:
        client.close()
    msg = "the replica did not catch up"
    raise LoadGenError(msg)


def _pairs(
    bench: Bench, server: Server | None, figures: _Figures, name: str
) -> list[dict[str, object]]:
    """Every repetition's idle and loaded pairs on ``server``; the readers' figures."""
    cfg = bench.config
    problem = "producer did not start" if server is None else None
    if server is not None:
        problem = check_post(server.base_url + EVENTS_PATH, SAMPLE_EVENT)
    if server is None or problem is not None:
        for fig in figures.all():
            fig.fail(problem or bench.why_unavailable(name))
        return []
    scratch = scratch_figure(figures.single_idle, "single")
    reads: list[dict[str, object]] = []
    for rep in range(cfg.repetitions):
        log(f"scenario 12 mixed ({name}): repetition {rep + 1}/{cfg.repetitions}")
        _measure_pair(bench, server, figures.single_idle, figures.batch_idle, scratch)
        # Past the end of both loaded runs (wrk rounds to whole seconds and takes a moment
        # to start): no part of them runs without readers.
        looping = Readers(bench, server, cfg.mixed_readers, 2 * cfg.duration_s + 4 * READERS_LEAD_S)
        time.sleep(READERS_LEAD_S)
        _measure_pair(bench, server, figures.single_loaded, figures.batch_loaded, scratch)
        looping.join()
        done = looping.result
        if done is None:
            figures.single_loaded.fail(f"readers failed: {looping.error}")
            continue
        reads.append(
            {
                "reads_per_s": round(done.requests / done.duration_s, 1),
                "refused_503_or_other_non_2xx": done.non_2xx,
                "read_p50_ms": done.p50_ms,
                "read_p99_ms": done.p99_ms,
            }
        )
        log(
            f"  readers: {done.requests / done.duration_s:,.0f} reads/s, {done.non_2xx} non-2xx, "
            f"p50 {done.p50_ms:.1f} ms, p99 {done.p99_ms:.1f} ms"
        )
    return reads
