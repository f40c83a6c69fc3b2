"""The load generators: wrk (installed from Debian if missing) and redis-benchmark.

Both run as separate processes; their CPU time is taken from the kernel's accounting of
the reaped child (``getrusage(RUSAGE_CHILDREN)`` before/after), which is exact.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.config import WRK_DIR

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

WRK_MARKER = "BENCH_JSON "
STATUS_MARKER = "BENCH_STATUSES "  # printed by scripts that count non-2xx by status


class LoadGenError(RuntimeError):
    """The load generator failed or printed nothing usable."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_wrk(install: bool) -> str | None:
    """The wrk binary; installs Debian's package (as root) when missing and allowed."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log("wrk is missing and cannot be installed here (need root and apt-get)")
        return None
    log("wrk is missing: apt-get update && apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        [apt, "-q", "update"],
        [apt, "-q", "install", "-y", "--no-install-recommends", "wrk"],
    ):
        proc = subprocess.run(
            args, capture_output=True, text=True, env=env, check=False, timeout=600
        )
        if proc.returncode != 0:
            log(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            return None
    return shutil.which("wrk")


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What a finished load-generator process printed and cost."""

    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    cpu_s: float

    @property
    def cpu_percent(self) -> float:
        """CPU of the generator as a percentage of one core over its wall time."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def run_child(
    argv: Sequence[str],
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildRun:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ChildRun(proc.stdout, proc.stderr, proc.returncode, wall, cpu)


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_percent: float
    # connect/read/write/timeout counts, and non-2xx by status where the script reports it
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def ok_requests(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok_per_s(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        return self.ok_requests / self.duration_s if self.duration_s > 0 else 0.0


def run_wrk(
    wrk: str,
    url: str,
    script: str,
    *,
    duration_s: float,
    connections: int,
    script_args: Sequence[str] = (),
    threads: int = 1,
) -> WrkResult:
    """Run one wrk script from bench/wrk/ against `url` (always a 127.0.0.1 address)."""
    if not url.startswith("http://127.0.0.1:"):
        raise LoadGenError(f"refusing to load anything but 127.0.0.1: {url}")
    argv = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
        "--latency", "--timeout", "10s", "-s", str(WRK_DIR / script), url,
        "--", *script_args,
    ]  # fmt: skip
    run = run_child(argv, timeout=duration_s + 60, cwd=WRK_DIR)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith(WRK_MARKER)), None)
    if run.returncode != 0 or line is None:
        raise LoadGenError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout}")
    data = json.loads(line[len(WRK_MARKER) :])
    kinds = {k: int(data[f"errors_{k}"]) for k in ("connect", "read", "write", "timeout")}
    status_line = next((ln for ln in run.stdout.splitlines() if ln.startswith(STATUS_MARKER)), "")
    if status_line:
        kinds |= {
            f"status_{code}": int(n)
            for code, n in json.loads(status_line[len(STATUS_MARKER) :]).items()
        }
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=int(data["duration_us"]) / 1e6,
        non_2xx=int(data["errors_status"]),
        socket_errors=sum(
            int(data[k])
            for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
        ),
        p50_ms=int(data["p50_us"]) / 1000,
        p90_ms=int(data["p90_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
        mean_ms=float(data["mean_us"]) / 1000,
        cpu_percent=run.cpu_percent,
        error_kinds={k: n for k, n in kinds.items() if n},
    )


@dataclass(frozen=True, slots=True)
class RedisBenchResult:
    ops_per_s: float
    requests: int
    wall_s: float
    cpu_percent: float


def run_redis_benchmark(
    binary: Path,
    *,
    env: Mapping[str, str],
    port: int,
    db: int,
    command: Sequence[str],
    requests: int,
    clients: int,
    pipeline: int,
    keyspace: int,
) -> RedisBenchResult:
    argv = [
        str(binary), "-h", "127.0.0.1", "-p", str(port), "--dbnum", str(db),
        "-c", str(clients), "-P", str(pipeline), "-n", str(requests), "-r", str(keyspace),
        "--csv", *command,
    ]  # fmt: skip
    run = run_child(argv, timeout=600, env=env)
    rows = [
        ln for ln in run.stdout.splitlines() if ln.startswith('"') and not ln.startswith('"test"')
    ]
    if run.returncode != 0 or not rows:
        raise LoadGenError(
            f"redis-benchmark failed ({run.returncode}): {run.stderr.strip() or run.stdout}"
        )
    rps = float(rows[-1].split(",")[1].strip('"'))
    return RedisBenchResult(rps, requests, run.wall_s, run.cpu_percent)
