"""A tiny run of the harness for the test suite: proves it still works, times nothing.

    from bench.smoke import run_smoke
    results = run_smoke(tmp_path)   # < 60 s; returns the same dict as the .json report

It runs the quick path of scenarios 1 (ceilings), 4 (worker drain, small backlog) and 6
(the tutorial baseline). Scenarios needing wrk are skipped when wrk is not installed
(it is never installed from here). Nothing is written under bench/results/.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bench.config import BenchConfig
from bench.run import run_bench

if TYPE_CHECKING:
    from pathlib import Path

SMOKE_SCENARIOS = (1, 4, 6)


def smoke_config(scenarios: tuple[int, ...] = SMOKE_SCENARIOS) -> BenchConfig:
    return replace(
        BenchConfig.quick_mode(),
        scenarios=scenarios,
        duration_s=1.0,
        drain_events=5_000,
        baseline_events=500,
        redis_benchmark_requests=5_000,
        install_wrk=False,
        write_results=False,
    )


def run_smoke(tmp_dir: Path, scenarios: tuple[int, ...] = SMOKE_SCENARIOS) -> dict[str, Any]:
    """Run the smoke configuration with all temporary files under `tmp_dir`.

    Returns the results document (``meta``, ``figures``, ``targets``, ``memory``,
    ``errors``); a figure whose median is None could not be measured (see its ``note``).
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return run_bench(smoke_config(scenarios), workdir=tmp_dir).to_json()
