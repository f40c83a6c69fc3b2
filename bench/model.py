"""A capacity model: events/s a deployment can sustain, from measured CPU per event.

    uv run python -m bench.model --cores 8 --workers 4            # one machine, one Redis
    uv run python -m bench.model --primaries 3 --shards 24 --workers 12 --producers 6
    uv run python -m bench.model --check                          # against this box's runs

Every stage is a set of single-threaded processes with a cost per event measured on this
machine (``make bench``): a producer process spends ``producer_us`` of CPU per event, a worker
``worker_us``, a Redis primary ``redis_us``. The sustained rate is the smallest of:

* the producers: ``P * 1e6 / producer_us`` (each process is one event loop, one core at most);
* the workers: ``min(W, shards) * 1e6 / worker_us`` (a shard has one owner; more workers stand
  by); on a cluster also ``shards`` spread over the primaries;
* Redis: ``primaries * 1e6 / redis_us`` (a primary runs commands on one thread; the shards,
  and with them the load, spread evenly over primaries when the shard count is a multiple of
  theirs);
* the cores, when processes share a machine: ``usable * cores * 1e6 / (sum of the costs of
  what runs there)``, ``usable`` the share of the cores the measured box could give the
  pipeline at its limit (the kernel's loopback networking, the load generator and the
  harness took the rest).

Where it stops holding: per-event costs are measured at this box's batch sizes and traffic
shape (gateway batches of 100; single events cost the producer ~20x more per event); Redis's
cost per event grows on a cluster (smaller per-slot commands) and with upserts (late or
interleaved samples); one hot device or metric lands on one shard and one primary whatever
the totals say; the network is not modelled (a gateway event is ~120 bytes of HTTP and ~100
of Redis protocol each way: 100,000 events/s is ~200 Mbit/s per hop, a 1 Gbit/s link is the
next limit near 400,000 events/s); nor is memory (docs/operating.md, Sizing Redis).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

DESCRIPTION = "Projected events/s of a deployment, from measured CPU per event."


@dataclass(frozen=True, slots=True)
class Costs:
    """CPU microseconds per event of each stage, and the usable share of a shared machine."""

    producer_us: float
    worker_us: float
    redis_us: float
    usable: float


# Gateway batches of 100: `make bench` scenario 10, 1 worker, default settings (medians of 5,
# bench/results/2026-12-07.md). ``usable``: that run used 0.86 of the 2 cores at its limit
# (82,595 events/s x 20.8 us; wrk, the kernel's loopback and the harness had the rest).
BATCH = Costs(producer_us=4.4, worker_us=10.4, redis_us=6.0, usable=0.86)
# Single events: scenario 8's single-event ramp at its last passing step (12,000 events/s,
# bench/results/2026-11-29.md): CPU 95.5% producer, 23.2% worker, 13.9% Redis.
SINGLE = Costs(producer_us=79.6, worker_us=19.3, redis_us=11.6, usable=0.86)
# A drain of a backlog (no producer), series created on the way: `make bench-cluster`'s
# single-node reference row (1 worker, 8 shards: 44,053 events per CPU-second, Redis 5.6 us).
DRAIN = Costs(producer_us=0.0, worker_us=1e6 / 44_053 - 5.6, redis_us=5.6, usable=0.86)
TRAFFIC = {"batch": BATCH, "single": SINGLE, "drain": DRAIN}
# Redis CPU per event on a cluster, relative to one node: `make bench-cluster` drains, 4 shards
# on 3 primaries (6.6 us) against one node with the default 8 shards (5.6 us),
# bench/results/2026-12-07-cluster.md.
CLUSTER_REDIS_FACTOR = 6.6 / 5.6


@dataclass(frozen=True, slots=True)
class Measured:
    """A run this machine measured, to check the model against."""

    what: str
    traffic: str
    deployment: Deployment
    events_per_s: float
    source: str


def measured_runs() -> list[Measured]:
    """What this box measured (2 cores, everything on it), for ``--check``."""
    box, day = 2.0, "2026-12-07"
    cluster = Deployment(shards=4, primaries=3, cores=box)
    return [
        Measured("scenario 10, 1 worker", "batch", Deployment(cores=box), 82_595, day),
        Measured(
            "scenario 10, 2 workers",
            "batch",
            Deployment(workers=2, cores=box),
            80_206,
            "2026-12-07",
        ),
        Measured(
            "scenario 10, 4 workers",
            "batch",
            Deployment(workers=4, cores=box),
            78_612,
            "2026-12-07",
        ),
        Measured(
            "scenario 8, single events, 1 worker (sustained)",
            "single",
            Deployment(cores=box),
            12_000,
            "2026-11-29",
        ),
        Measured("bench-cluster drain, 4 shards, 1 worker", "drain", cluster, 55_645, day),
        Measured(
            "bench-cluster drain, 4 shards, 2 workers",
            "drain",
            Deployment(workers=2, shards=4, primaries=3, cores=box),
            59_868,
            day,
        ),
    ]


@dataclass(frozen=True, slots=True)
class Deployment:
    """What runs where: one machine of ``cores`` for everything (``primaries`` = 1), or a
    cluster whose primaries, producers and workers each have their own cores."""

    producers: int = 1
    workers: int = 1
    shards: int = 8
    primaries: int = 1
    cores: float | None = None  # the shared machine's cores; None: every process has its own


@dataclass(frozen=True, slots=True)
class Projection:
    """The sustained events/s and the stage that sets it, with every stage's own limit."""

    events_per_s: float
    limit: str
    limits: dict[str, float]


def project(costs: Costs, deployment: Deployment) -> Projection:
    """The events/s ``deployment`` sustains with ``costs`` (see the module docstring)."""
    busy_workers = min(deployment.workers, deployment.shards)
    limits = {
        "producers": (
            deployment.producers * 1e6 / costs.producer_us if costs.producer_us else float("inf")
        ),
        "workers": busy_workers * 1e6 / costs.worker_us,
        "redis": deployment.primaries * 1e6 / costs.redis_us,
    }
    if deployment.primaries > 1:
        limits["redis"] /= CLUSTER_REDIS_FACTOR
    if deployment.cores is not None:
        per_event = costs.producer_us + costs.worker_us + costs.redis_us
        limits["cores"] = costs.usable * deployment.cores * 1e6 / per_event
    limit = min(limits, key=limits.__getitem__)
    return Projection(limits[limit], limit, limits)


def check() -> list[str]:
    """Markdown rows: each measured run against the model's projection for it."""
    rows = [
        "| Run | Measured events/s | Model events/s | Model / measured | Model's limit | When |",
        "|---|---|---|---|---|---|",
    ]
    for run in measured_runs():
        projection = project(TRAFFIC[run.traffic], run.deployment)
        ratio = projection.events_per_s / run.events_per_s
        rows.append(
            f"| {run.what} | {run.events_per_s:,.0f} | {projection.events_per_s:,.0f} "
            f"| {ratio:.2f} | {projection.limit} | {run.source} |"
        )
    return rows


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=DESCRIPTION)
    parser.add_argument("--traffic", choices=sorted(TRAFFIC), default="batch")
    parser.add_argument("--producers", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--primaries", type=int, default=1)
    parser.add_argument(
        "--cores", type=float, default=None, help="everything on one machine of this many cores"
    )
    parser.add_argument("--check", action="store_true", help="the model against measured runs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the projection for the deployment on the command line."""
    args = _parse(argv)
    if args.check:
        print("\n".join(check()))
        return 0
    costs = TRAFFIC[args.traffic]
    deployment = Deployment(args.producers, args.workers, args.shards, args.primaries, args.cores)
    result = project(costs, deployment)
    print(f"{result.events_per_s:,.0f} events/s, limited by {result.limit}")
    for stage, value in sorted(result.limits.items(), key=lambda item: item[1]):
        print(f"  {stage:>9}: {value:,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
