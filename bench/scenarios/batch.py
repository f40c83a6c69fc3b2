"""Scenario 3: the producer taking JSON arrays of 100 and 1000 events; events/s."""

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
    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure

SCRIPT = "post_batch.lua"
BATCH_TARGET_SIZE = 1000
BATCH_TARGET_EVENTS_PER_S = 150_000.0


def run(bench: Bench) -> None:
    cfg = bench.config
    conns = cfg.batch_connections
    figs: list[tuple[int, Figure]] = []
    for size in cfg.batch_sizes:
        key = f"producer.batch.{size}"
        fig = bench.results.figure(key, 3, f"Producer batches of {size}, {conns} conns", "events/s")
        figs.append((size, fig))
        if size == BATCH_TARGET_SIZE:
            bench.results.target("batch_1000", "events/s", key, BATCH_TARGET_EVENTS_PER_S)

    server: Server | None = bench.producer(1)
    if server is None:
        for _, fig in figs:
            fig.fail(bench.why_unavailable("producer-1p"))
        return
    problem = check_post(
        server.base_url + EVENTS_PATH, [SAMPLE_EVENT, SAMPLE_EVENT], expect_count=2
    )
    if problem is not None:
        for _, fig in figs:
            fig.fail(f"batch route: {problem}")
        return
    for size, _ in figs:
        warm_up(bench, server, SCRIPT, conns, [str(size)])
    reset_streams(bench)
    for rep in range(cfg.repetitions):
        log(f"scenario 3 batches: repetition {rep + 1}/{cfg.repetitions}")
        for size, fig in figs:
            measure(
                bench, server, fig, SCRIPT,
                connections=conns, script_args=[str(size)], per_request=size,
            )  # fmt: skip
            reset_streams(bench)
        if rep == 0:
            bench.mark("producer-1p", "warm:3")
    if cfg.profile:
        size, fig = figs[-1]
        log(f"scenario 3: profiled repetition, batches of {size} (not measured)")
        with profiled(bench, f"producer-batch-{size}", server):
            measure(
                bench, server, scratch_figure(fig, "profiled"), SCRIPT,
                connections=conns, script_args=[str(size)], per_request=size,
            )  # fmt: skip
        reset_streams(bench)
