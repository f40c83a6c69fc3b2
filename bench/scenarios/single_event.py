"""Scenarios 1 (minimal Litestar), 2 (producer, 1 process) and 6 (baseline producer).

More producer processes: scenario 9.

The minimal route, the producer and the baseline run back to back inside each repetition,
so the ratios between them are paired in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.context import SAMPLE_EVENT
from bench.loadgen import log
from bench.profile import profiled
from bench.scenarios.common import (
    EVENTS_PATH,
    check_post,
    measure,
    reset_streams,
    scratch_figure,
    warm_up,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure

SCRIPT = "post_event.lua"

MINIMAL = "ceiling.minimal"
PRODUCER_1P = "producer.single.1p"
PRODUCER_NO_METRICS = "producer.single.1p.nometrics"
BASELINE = "baseline.single"


def _prepare(
    bench: Bench, fig: Figure, start: Callable[[], Server | None], name: str
) -> Server | None:
    server = start()
    if server is None:
        fig.fail(bench.why_unavailable(name))
        return None
    problem = check_post(server.base_url + EVENTS_PATH, SAMPLE_EVENT)
    if problem is not None:
        fig.fail(problem)
        return None
    warm_up(bench, server, SCRIPT, bench.config.connections)
    return server


def run(bench: Bench) -> None:
    cfg, results = bench.config, bench.results
    conns = cfg.connections
    lineup: list[tuple[Figure, Callable[[], Server | None], str]] = []
    if 1 in cfg.scenarios:
        fig = results.figure(MINIMAL, 1, f"Minimal Litestar route, {conns} conns", "req/s")
        lineup.append((fig, bench.minimal_app, "minimal-litestar"))
    if 2 in cfg.scenarios:
        fig = results.figure(
            PRODUCER_1P, 2, f"Producer single event, 1 process, {conns} conns", "req/s"
        )
        lineup.append((fig, lambda: bench.producer(1), "producer-1p"))
        results.target(
            "producer_vs_baseline",
            "vs baseline",
            PRODUCER_1P,
            3.0,
            versus=BASELINE,
            versus_label="baseline",
        )
        results.target(
            "producer_vs_minimal",
            "vs minimal",
            PRODUCER_1P,
            0.8,
            versus=MINIMAL,
            versus_label="minimal",
        )
        fig = results.figure(
            PRODUCER_NO_METRICS,
            2,
            f"Producer single event, 1 process, INGEST_METRICS=off, {conns} conns",
            "req/s",
        )
        lineup.append((fig, lambda: bench.producer(1, metrics=False), "producer-1p-nometrics"))
        results.target(
            "metrics_cost",
            "metrics on vs off",
            PRODUCER_1P,
            0.97,
            versus=PRODUCER_NO_METRICS,
            versus_label="metrics off",
        )
    if 6 in cfg.scenarios:
        fig = results.figure(
            BASELINE, 6, f"Baseline producer (FastAPI + Pydantic), {conns} conns", "req/s"
        )
        lineup.append((fig, bench.baseline, "baseline"))

    ready = [
        (fig, server)
        for fig, start, name in lineup
        if (server := _prepare(bench, fig, start, name))
    ]
    for rep in range(cfg.repetitions):
        log(f"scenarios 1/2/6 single event: repetition {rep + 1}/{cfg.repetitions}")
        for fig, server in ready:
            measure(bench, server, fig, SCRIPT, connections=conns)
            reset_streams(bench)
        if rep == 0:
            bench.mark("producer-1p", "warm:2")
    bench.stop("minimal-litestar")
    bench.stop("producer-1p-nometrics")
    producer = bench.servers.get("producer-1p")
    if cfg.profile and producer is not None and PRODUCER_1P in {f.key for f, _ in ready}:
        log("scenario 2: profiled repetition (not measured)")
        with profiled(bench, "producer-single", producer):
            measure(
                bench,
                producer,
                scratch_figure(results.figures[PRODUCER_1P], "profiled"),
                SCRIPT,
                connections=conns,
            )
        reset_streams(bench)
