"""Helpers the scenarios share: route checks, one wrk measurement, stream resets."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import httpx
import redis

from bench.config import BASELINE_DB, PRODUCT_DB, STREAM_KEY
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.results import Figure

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.context import Bench
    from bench.procs import Server

EVENTS_PATH = "/api/ingest/events"
WARMUP_S = 1.0


def check_post(url: str, body: object, expect_count: int | None = None) -> str | None:
    """None if POST `url` answers 200 (with `count` == expect_count if given), else why not."""
    try:
        response = httpx.post(url, json=body, timeout=10.0)
    except httpx.HTTPError as exc:
        return f"POST {url.split('/', 3)[-1]}: {exc}"
    if response.status_code != 200:
        return f"POST /{url.split('/', 3)[-1]} -> {response.status_code}"
    if expect_count is not None:
        try:
            count = response.json().get("count")
        except (ValueError, AttributeError):
            count = None
        if count != expect_count:
            return f"POST /{url.split('/', 3)[-1]} answered 200 without count={expect_count}"
    return None


def measure(
    bench: Bench,
    server: Server,
    fig: Figure,
    script: str,
    *,
    connections: int,
    script_args: Sequence[str] = (),
    duration_s: float | None = None,
    per_request: int = 1,
) -> WrkResult | None:
    """One wrk run against `server`; adds one repetition (value or None) to `fig`."""
    if bench.wrk is None:
        fig.fail("wrk not installed")
        fig.add(None)
        return None
    duration = duration_s if duration_s is not None else bench.config.duration_s
    cpu_before = server.cpu_by_pid()
    try:
        result = run_wrk(
            bench.wrk,
            server.base_url,
            script,
            duration_s=duration,
            connections=connections,
            script_args=script_args,
        )
    except (LoadGenError, OSError) as exc:
        fig.fail(f"wrk failed: {str(exc)[:120]}")
        fig.add(None)
        return None
    cpu_after = server.cpu_by_pid()
    split = sorted(
        (
            100.0 * (cpu_after[pid] - cpu_before.get(pid, 0.0)) / result.duration_s
            for pid in cpu_after
        ),
        reverse=True,
    )
    server_cpu = sum(split)
    if len(split) > 1:  # uvicorn supervisor + workers: show how the load was shared
        fig.extra.setdefault("server_cpu_split_percent", []).append([round(v) for v in split])
    if result.non_2xx or result.socket_errors:
        fig.fail(f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    value = result.ok_per_s * per_request if result.ok_requests > 0 else None
    fig.add(
        value,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        gen_cpu=result.cpu_percent,
        server_cpu=server_cpu,
    )
    shown = "n/a" if value is None else f"{value:,.0f}"
    log(
        f"  {fig.label}: {shown} {fig.unit}, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, wrk CPU {result.cpu_percent:.0f}%, "
        f"server CPU {server_cpu:.0f}%"
        + (f" (per process {'/'.join(f'{v:.0f}' for v in split)})" if len(split) > 1 else "")
    )
    return result


def scratch_figure(like: Figure, why: str) -> Figure:
    """A figure that is not reported, for unmeasured (warm-up or profiled) repetitions."""
    return Figure(f"{like.key}.{why}", like.scenario, f"{like.label} [{why}]", like.unit)


def warm_up(
    bench: Bench, server: Server, script: str, connections: int, args: Sequence[str] = ()
) -> None:
    if bench.wrk is None:
        return
    with contextlib.suppress(LoadGenError, OSError):
        run_wrk(
            bench.wrk,
            server.base_url,
            script,
            duration_s=WARMUP_S,
            connections=connections,
            script_args=args,
        )


def reset_streams(bench: Bench) -> None:
    """Drop what the HTTP scenarios appended (keeps the streams and their groups)."""
    for db in (PRODUCT_DB, BASELINE_DB):
        with contextlib.suppress(redis.ResponseError):
            bench.client(db).xtrim(STREAM_KEY, maxlen=0, approximate=False)
