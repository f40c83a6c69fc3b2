"""Scenario 7: peak RSS and growth of the producer and worker processes over the run.

RSS is sampled every 200 ms for the whole process tree (uvicorn's workers included).
RSS is marked after the first measured repetition of every scenario a process serves and
after its last one. "Warm" is the highest first-repetition mark, i.e. once the process has
seen every kind of load once (a first batch of 1000 events raises the heap for good, which
is not a leak); growth is end over warm. The JSON also has the growth from the earliest
mark. Peak covers the process's whole life.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.loadgen import log

if TYPE_CHECKING:
    from bench.context import Bench

MIB = 1024 * 1024
GROWTH_LIMIT_PERCENT = 10.0
TARGETED = {"producer-1p": "Producer (1 process)", "worker-1": "Worker (1 process)"}
REPORTED = ("producer-1p", "producer-2p", "worker-1", "worker-2", "minimal-litestar", "baseline")


def collect(bench: Bench) -> None:
    """Fill results.memory from the sampler, and the scenario 7 figures and targets."""
    for name in list(bench.servers):
        bench.mark(name, "end", first_only=True)
    want = 7 in bench.config.scenarios
    for name in REPORTED:
        track = bench.sampler.tracks.get(name)
        if track is None or not track.samples:
            continue
        warm_marks = [rss for label, rss in track.marks.items() if label.startswith("warm")]
        warm = max(warm_marks, default=None)
        first = warm_marks[0] if warm_marks else None
        end = track.marks.get("end", track.samples[-1][1])
        growth = 100.0 * (end - warm) / warm if warm else None
        bench.results.memory[name] = {
            "peak_mib": track.peak / MIB,
            "warm_mib": warm / MIB if warm else None,
            "end_mib": end / MIB,
            "growth_percent": growth,
            "first_warm_mib": first / MIB if first else None,
            "growth_from_first_warm_percent": 100.0 * (end - first) / first if first else None,
            "marks_mib": {label: rss / MIB for label, rss in track.marks.items()},
            "samples": len(track.samples),
        }
        if want and name in TARGETED:
            key = f"memory.{name}"
            fig = bench.results.figure(
                key,
                7,
                f"{TARGETED[name]} RSS growth warm->end (peak {track.peak / MIB:.0f} MiB)",
                "%",
            )
            fig.add(growth)
            if warm is None:
                fig.fail("no warm mark: process served no measured repetition")
            bench.results.target(f"rss_{name}", "growth", key, GROWTH_LIMIT_PERCENT, comparison="<")
            shown = "n/a" if growth is None else f"{growth:.1f}%"
            log(f"scenario 7: {name} peak {track.peak / MIB:.0f} MiB, growth {shown}")
    if want:
        for name, label in TARGETED.items():
            if f"memory.{name}" not in bench.results.figures:
                fig = bench.results.figure(f"memory.{name}", 7, f"{label} RSS growth", "%")
                fig.fail(bench.unavailable.get(name, "process not run"))
                bench.results.target(
                    f"rss_{name}", "growth", f"memory.{name}", GROWTH_LIMIT_PERCENT, comparison="<"
                )
