"""Optional py-spy profiles (``--profile``) of the producer and the worker under load.

Profiling slows the target, so it runs in an extra, unmeasured repetition after the
measured ones. The raw collapsed stacks are kept next to the results; the report shows the
functions with the most samples (self time, and inclusive time) for each profile.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.config import REPO_ROOT
from bench.loadgen import log
from bench.procs import venv_script

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bench.context import Bench
    from bench.procs import Server

SAMPLE_RATE_HZ = 200
TOP = 12
_LINE_NO = re.compile(r":\d+\)$")


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    samples: int
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]


def _short(frame: str) -> str:
    """`func (/long/path/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    frame = _LINE_NO.sub(")", frame)
    name, _, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


def summarize(raw: str) -> ProfileSummary:
    """Top functions of py-spy's raw (collapsed) output, as % of the sampled stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def top(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in counter.most_common(TOP)] if total else []

    return ProfileSummary(total, top(own), top(inclusive))


@contextlib.contextmanager
def profiled(bench: Bench, name: str, server: Server) -> Iterator[None]:
    """py-spy records `server` (and its subprocesses) while the block runs."""
    py_spy = venv_script("py-spy")
    out = bench.workdir / f"profile-{name}.txt"
    if py_spy is None:
        bench.results.errors.append("py-spy not installed: no profiles")
        yield
        return
    argv = [
        str(py_spy), "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking",
        "--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--output", str(out), "--duration", "600",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if not out.is_file():
        bench.results.errors.append(f"py-spy wrote no profile for {name}")
        return
    raw = out.read_text(errors="replace")
    summary = summarize(raw)
    bench.profiles[name] = (raw, summary)
    log(f"  profile {name}: {summary.samples} samples; top self: {summary.top_self[:3]}")


def save(bench: Bench, results_dir: Path | None, stem: str) -> dict[str, Any]:
    """Write each raw profile to results_dir/profiles/ (if given); return the summaries."""
    saved: dict[str, Any] = {}
    for name, (raw, summary) in bench.profiles.items():
        where = "(not kept)"
        if results_dir is not None:
            path = results_dir / "profiles" / f"{stem}-{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(raw)
            where = str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
        saved[name] = {
            "file": where,
            "samples": summary.samples,
            "top_self_percent": summary.top_self,
            "top_inclusive_percent": summary.top_inclusive,
        }
    return saved


def render(profiles: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, data in profiles.items():
        lines += [
            "",
            f"Profile `{name}` ({data['samples']} samples at {SAMPLE_RATE_HZ} Hz, "
            f"idle excluded; raw stacks: `{data['file']}`):",
            "",
            "| Self % | Function | | Inclusive % | Function |",
            "|---|---|---|---|---|",
        ]
        for (own, own_pct), (inc, inc_pct) in zip(
            data["top_self_percent"], data["top_inclusive_percent"], strict=False
        ):
            lines.append(f"| {own_pct:.1f} | `{own}` | | {inc_pct:.1f} | `{inc}` |")
    return "\n".join(lines)
