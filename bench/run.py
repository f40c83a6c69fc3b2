"""`make bench`: run the issue-4 scenarios against a fresh local Redis and report.

    uv run --all-packages --group bench python -m bench.run [--quick] [--only 1,2,6]

Progress goes to stderr, the Markdown table to stdout, and the results to
bench/results/<YYYY-MM-DD>.json and .md (``-quick`` suffix for --quick runs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from bench.config import REPO_ROOT, BenchConfig, parse_args
from bench.context import Bench
from bench.loadgen import ensure_wrk, log
from bench.plot import plot_capacity
from bench.profile import save as save_profiles
from bench.results import Results, render_report
from bench.scenarios import (
    batch,
    capacity,
    ceilings,
    drain,
    e2e,
    memory,
    mixed,
    protocols,
    scaling,
    single_event,
    workers,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ingest_devtools.localredis import LocalRedis

WRK_SCENARIOS = {1, 2, 3, 5, 6, 8, 9, 10, 11, 12}


def _phases(config: BenchConfig) -> list[tuple[str, Callable[[Bench], None]]]:
    wanted = set(config.scenarios)
    phases: list[tuple[str, Callable[[Bench], None]]] = []
    if 1 in wanted:
        phases.append(("1 ceilings: redis-benchmark", ceilings.run))
    if wanted & {1, 2, 6}:
        phases.append(("1/2/6 single event: minimal route, producer, baseline", single_event.run))
    if 3 in wanted:
        phases.append(("3 batches", batch.run))
    if 11 in wanted:
        phases.append(("11 protocols: line protocol, remote-write, OTLP vs JSON", protocols.run))
    if 9 in wanted:  # before any worker runs: a worker would drain what the producers append
        phases.append(("9 scaling: 1-3 producer processes", scaling.run_producers))
    if wanted & {4, 6}:
        phases.append(("4/6 drain: worker and baseline", drain.run))
    # Before 5 and 8: its drains write occurredAt in the past, theirs write "now", and
    # series take later samples faster than earlier ones.
    if 9 in wanted:
        phases.append(("9 scaling: 1-3 worker processes", scaling.run_workers))
    if 5 in wanted:
        phases.append(("5 end to end", e2e.run))
    if 8 in wanted:
        phases.append(("8 sustained capacity ramps", capacity.run))
    # Stops every process and flushes the product database, then loads its own data.
    if 12 in wanted:
        phases.append(("12 mixed load: ingest beside readers", mixed.run))
    # Last: it flushes the product database and stops the one-stream processes.
    if 10 in wanted:
        phases.append(("10 workers that scale: default settings, 1/2/4 workers", workers.run))
    return phases


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=10, check=False, cwd=REPO_ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines and proc.returncode == 0 else ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _meta(config: BenchConfig, wrk: str | None) -> dict[str, object]:
    return {
        "date": dt.date.today().isoformat(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if config.quick else "full",
        "repetitions": config.repetitions,
        "duration_s": config.duration_s,
        "machine": f"{os.cpu_count()} cores, {_cpu_model()}, {platform.platform()}",
        "python": sys.version.split()[0],
        "git_commit": _first_line(["git", "rev-parse", "--short", "HEAD"]),
        "wrk": _first_line([wrk, "--version"]) if wrk else None,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "notes": [
            f"Load generator: wrk -t1 (Lua scripts in bench/wrk/), {config.connections} "
            f"connections for single events, {config.batch_connections} for batches; "
            "its CPU is % of one core (for the baseline drains: the harness's client loop; "
            "scenario 5 also reports the probe's CPU in the JSON).",
            "Server CPU: the producer/worker/baseline process tree (Redis for redis-benchmark), "
            "% of one core.",
            f"Drains: the worker's backlog is {config.drain_events:,} events, the baseline's "
            f"{config.baseline_events:,} (it awaits one TS.ADD at a time, so its rate does not "
            "depend on the backlog size); each backlog is appended in one transaction while "
            "the consumers wait, and timed until XPENDING and the group lag are both 0.",
            "Ratios are computed per repetition between figures measured back to back, "
            "then the median is taken. The 2-process/1-process scaling ratios are for "
            "information and not paired in time (the 1-process repetitions ran earlier).",
        ],
    }


def _redis_versions(bench: Bench) -> dict[str, str]:
    client = bench.client(0)
    info = client.info("server")
    modules = client.execute_command("MODULE", "LIST")  # type: ignore[no-untyped-call]
    versions = {"redis": str(info.get("redis_version"))}
    for module in modules or []:
        fields = (
            module
            if isinstance(module, dict)
            else dict(zip(module[::2], module[1::2], strict=False))
        )
        decoded = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in fields.items()
        }
        if "name" in decoded:
            versions[decoded["name"]] = decoded.get("ver", "")
    return versions


def _local_redis(data_dir: Path) -> LocalRedis:
    from ingest_devtools.localredis import LocalRedis

    return LocalRedis(data_dir=data_dir, appendonly=False)


def run_bench(config: BenchConfig, workdir: Path | None = None) -> Results:
    """Run the configured scenarios; always returns results (failures become n/a + errors)."""
    results = Results()
    wrk = (
        ensure_wrk(config.install_wrk)
        if set(config.scenarios) & WRK_SCENARIOS
        else shutil.which("wrk")
    )
    results.meta = _meta(config, wrk)
    if wrk is None and set(config.scenarios) & WRK_SCENARIOS:
        results.errors.append("wrk is not installed: HTTP scenarios are n/a")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-", dir=workdir) as tmp:
        server = _local_redis(Path(tmp) / "redis")
        log(f"starting a fresh local Redis (appendonly off) in {tmp}")
        with server:
            bench = Bench(config, server, Path(tmp), results, wrk)
            bench.sampler.start()
            try:
                results.meta["redis"] = _redis_versions(bench)
                for title, phase in _phases(config):
                    log(f"== scenario {title}")
                    phase_started = time.monotonic()
                    try:
                        phase(bench)
                    except Exception as exc:  # one broken scenario must not stop the run
                        results.errors.append(f"scenario {title}: {type(exc).__name__}: {exc}")
                        log(f"scenario {title} failed:\n{traceback.format_exc()}")
                    log(f"   ({time.monotonic() - phase_started:.0f} s)")
                memory.collect(bench)
                if bench.profiles:
                    stem = str(results.meta["date"]) + ("-quick" if config.quick else "")
                    results.profiles = save_profiles(
                        bench, config.results_dir if config.write_results else None, stem
                    )
            finally:
                bench.close()
                bench.sampler.stop()
    results.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    log(f"done in {results.meta['elapsed_s']} s")
    return results


def write_results(results: Results, results_dir: Path, quick: bool) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = str(results.meta.get("date")) + ("-quick" if quick else "")
    written: list[Path] = []
    if results.data.get("capacity"):
        title = f"Capacity ramps, {results.meta.get('date')} ({results.meta.get('machine')})"
        plot = plot_capacity(results.data["capacity"], results_dir / f"{stem}-capacity.png", title)
        if plot is not None:
            results.meta["capacity_plot"] = plot.name
            results.tables.append(
                ("Capacity plot:", f"![capacity ramps]({plot.name}) (`bench/results/{plot.name}`)")
            )
            written.append(plot)
    paths = (results_dir / f"{stem}.json", results_dir / f"{stem}.md")
    for path, text in (
        (paths[0], json.dumps(results.to_json(), indent=2, default=str) + "\n"),
        (paths[1], render_report(results)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return [*paths, *written]


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    results = run_bench(config)
    report = render_report(results)
    print(report, flush=True)
    if config.write_results:
        for path in write_results(results, config.results_dir, config.quick):
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
