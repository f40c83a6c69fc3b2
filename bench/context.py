"""The state one benchmark run shares: the Redis server, the servers under test, results."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from bench.config import (
    BASELINE_DB,
    CONSUMER_GROUP,
    DEAD_LETTER_KEY,
    METRICS_KEY,
    PRODUCT_DB,
    SERIES_PREFIX,
    STREAM_KEY,
    WORKER_VARIANT_PREFIXES,
    WORKER_VARIANT_STREAMS,
)
from bench.loadgen import log
from bench.procs import (
    HOST,
    RssSampler,
    Server,
    ServerError,
    base_env,
    free_port,
    http_ready,
    uvicorn_argv,
    venv_script,
)

if TYPE_CHECKING:
    from pathlib import Path

    from bench.config import BenchConfig
    from bench.profile import ProfileSummary
    from bench.results import Results
    from ingest_devtools.localredis import LocalRedis

SAMPLE_EVENT = {"source": "sensor-a", "metric": "cpu", "value": 12.5}


@dataclass
class Bench:
    config: BenchConfig
    redis_server: LocalRedis
    workdir: Path
    results: Results
    wrk: str | None
    sampler: RssSampler = field(default_factory=RssSampler)
    servers: dict[str, Server] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, tuple[str, ProfileSummary]] = field(default_factory=dict)
    # State scenarios hand on to later ones (e.g. the drains' timeline of occurredAt).
    state: dict[str, Any] = field(default_factory=dict)
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    # --- Redis ---------------------------------------------------------------------------

    def redis_url(self, db: int) -> str:
        return f"redis://{HOST}:{self.redis_server.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        """The bench's own connection to logical database `db` (closed by close())."""
        if db not in self._clients:
            self._clients[db] = redis.Redis(
                host=HOST, port=self.redis_server.port, db=db, socket_timeout=120
            )
        return self._clients[db]

    def close(self) -> None:
        """Stop every server this run started and close its Redis connections."""
        self.stop_all()
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # --- servers -------------------------------------------------------------------------

    def product_env(self, *, product_defaults: bool = False, **extra: str) -> dict[str, str]:
        """The environment of the product's processes: the bench's key names (the defaults).

        Scenarios 1-9 get one stream and no backpressure. ``product_defaults`` sets neither
        (and drops any INGEST_* variable inherited from the caller's shell), for scenario 10,
        which measures the product as shipped.
        """
        ours = {
            "REDIS_URL": self.redis_url(PRODUCT_DB),
            "INGEST_STREAM_KEY": STREAM_KEY,
            "INGEST_DEAD_LETTER_KEY": DEAD_LETTER_KEY,
            "INGEST_CONSUMER_GROUP": CONSUMER_GROUP,
            "INGEST_METRICS_KEY": METRICS_KEY,
            "INGEST_SERIES_PREFIX": SERIES_PREFIX,
            "INGEST_LOG_LEVEL": "warning",
        }
        if not product_defaults:
            # They measure one process on one stream and read STREAM_KEY directly (prefills,
            # group counters, resets): the unsharded layout, not the default 8 shards.
            ours["INGEST_STREAM_SHARDS"] = "1"
            # No worker drains during scenarios 2-3: the producer's backpressure (503 above
            # INGEST_MAX_BACKLOG, default 1,000,000) would cut a batch run short.
            ours["INGEST_MAX_BACKLOG"] = "1000000000"
        env = base_env(ours | extra)
        if product_defaults:
            for name in [n for n in env if n.startswith("INGEST_") and n not in ours | extra]:
                del env[name]
        return env

    def _start(self, server: Server) -> Server | None:
        if server.name in self.servers and self.servers[server.name].alive():
            return self.servers[server.name]
        if server.name in self.unavailable:
            return None
        log(f"starting {server.name}")
        try:
            server.start()
        except (ServerError, OSError) as exc:
            reason = str(exc).splitlines()[0]
            self.unavailable[server.name] = reason
            self.results.errors.append(f"{server.name}: {exc}")
            log(f"{server.name} unavailable: {reason}")
            return None
        self.servers[server.name] = server
        self.sampler.watch(server)
        return server

    def stop(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            self.sampler.unwatch(server)
            log(f"stopping {name}")
            server.stop()

    def stop_all(self) -> None:
        for name in list(self.servers):
            self.stop(name)

    def producer(
        self, workers: int = 1, *, metrics: bool = True, max_backlog: int | None = None
    ) -> Server | None:
        """`ingest-producer` with `workers` uvicorn processes, or None (reason recorded).

        ``metrics=False`` runs it with INGEST_METRICS=off, to measure what metrics cost.
        ``max_backlog`` sets INGEST_MAX_BACKLOG (default: 10^9, no backpressure; the
        capacity ramp runs with the product's default and a worker draining).
        """
        name = f"producer-{workers}p" + ("" if metrics else "-nometrics")
        if max_backlog is not None:
            name += "-backlog"
        extra = {
            "INGEST_HTTP_WORKERS": str(workers),
            "INGEST_METRICS": "on" if metrics else "off",
        }
        if max_backlog is not None:
            extra["INGEST_MAX_BACKLOG"] = str(max_backlog)
        return self._producer(name, product_defaults=False, **extra)

    def replica_producer(self, read_redis_url: str) -> Server | None:
        """One `ingest-producer` process whose queries read ``read_redis_url`` (a replica of
        the bench's Redis: INGEST_READ_REDIS_URL)."""
        return self._producer(
            "producer-1p-replica",
            product_defaults=False,
            INGEST_HTTP_WORKERS="1",
            INGEST_READ_REDIS_URL=read_redis_url,
        )

    def worker(self, index: int, variant: str = "") -> Server | None:
        """`ingest-worker` process number `index` (its own consumer name).

        ``variant`` "native" runs it with INGEST_MAX_ENTRY_BYTES=0, "nocollapse" runs
        bench/nocollapse_worker.py; each reads its own stream (WORKER_VARIANT_STREAMS).
        """
        name = f"worker-{variant or index}"
        if name in self.servers:
            return self.servers[name]
        script = venv_script("ingest-worker")
        if script is None:
            self.unavailable.setdefault(name, "ingest-worker is not installed")
            return None
        argv = [str(script)]
        # No metrics port: several workers run side by side on one host.
        env = self.product_env(
            INGEST_CONSUMER_NAME=f"bench-worker-{variant or index}", INGEST_WORKER_HTTP_PORT="0"
        )
        if variant:
            env["INGEST_STREAM_KEY"] = WORKER_VARIANT_STREAMS[variant]
            env["INGEST_KEY_PREFIX"] = WORKER_VARIANT_PREFIXES[variant]
        if variant == "native":
            env["INGEST_MAX_ENTRY_BYTES"] = "0"
        elif variant == "nocollapse":
            argv = [sys.executable, "-m", "bench.nocollapse_worker"]
        server = Server(name, argv, env, self.workdir / "logs")
        return self._start(server)

    def default_producer(self, name: str, **extra: str) -> Server | None:
        """`ingest-producer` with the product's defaults (shards, INGEST_MAX_BACKLOG,
        INGEST_HTTP_WORKERS) plus `extra`, under `name`; None if it did not start."""
        return self._producer(name, product_defaults=True, **extra)

    def _producer(self, name: str, *, product_defaults: bool, **extra: str) -> Server | None:
        """An `ingest-producer` on a free port, ready once `/ready` answers, under `name`."""
        if name in self.servers:
            return self.servers[name]
        script = venv_script("ingest-producer")
        if script is None:
            self.unavailable.setdefault(name, "ingest-producer is not installed")
            return None
        port = free_port()
        env = self.product_env(
            product_defaults=product_defaults,
            INGEST_HTTP_HOST=HOST,
            INGEST_HTTP_PORT=str(port),
            **extra,
        )
        server = Server(
            name, [str(script)], env, self.workdir / "logs",
            ready=http_ready(f"http://{HOST}:{port}/ready"), port=port,
        )  # fmt: skip
        return self._start(server)

    def default_worker(
        self, name: str, consumer: str, *, module: str | None = None, **extra: str
    ) -> Server | None:
        """`ingest-worker` (or ``python -m module``) with the product's defaults plus `extra`,
        consumer name `consumer`; not waited for (see scenarios.common.wait_owned)."""
        if name in self.servers:
            return self.servers[name]
        script = venv_script("ingest-worker")
        if script is None and module is None:
            self.unavailable.setdefault(name, "ingest-worker is not installed")
            return None
        argv = [sys.executable, "-m", module] if module else [str(script)]
        # No metrics port: several workers run side by side on one host.
        env = self.product_env(
            product_defaults=True,
            INGEST_CONSUMER_NAME=consumer,
            INGEST_WORKER_HTTP_PORT="0",
            **extra,
        )
        return self._start(Server(name, argv, env, self.workdir / "logs"))

    def minimal_app(self) -> Server | None:
        name = "minimal-litestar"
        if name in self.servers:
            return self.servers[name]
        port = free_port()
        server = Server(
            name, uvicorn_argv("bench.minimal_app:app", port), base_env({}), self.workdir / "logs",
            ready=http_ready(f"http://{HOST}:{port}/api/ingest/events", "POST", SAMPLE_EVENT),
            port=port,
        )  # fmt: skip
        return self._start(server)

    def baseline(self) -> Server | None:
        name = "baseline"
        if name in self.servers:
            return self.servers[name]
        port = free_port()
        env = base_env(
            {
                "REDIS_URL": self.redis_url(BASELINE_DB),
                "INGEST_STREAM_KEY": STREAM_KEY,
                "INGEST_DEAD_LETTER_KEY": DEAD_LETTER_KEY,
                "INGEST_CONSUMER_GROUP": CONSUMER_GROUP,
                "INGEST_METRICS_KEY": METRICS_KEY,
            }
        )
        server = Server(
            name, uvicorn_argv("bench.baseline.app:app", port), env, self.workdir / "logs",
            ready=http_ready(f"http://{HOST}:{port}/api/ingest/summary"), port=port,
        )  # fmt: skip
        return self._start(server)

    def why_unavailable(self, name: str) -> str:
        return self.unavailable.get(name, f"{name} unavailable")

    # --- memory marks --------------------------------------------------------------------

    def mark(self, name: str, label: str, *, first_only: bool = False) -> None:
        track = self.sampler.tracks.get(name)
        if first_only and track is not None and label in track.marks:
            return
        self.sampler.mark(name, label)
