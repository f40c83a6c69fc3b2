"""Helpers the scenarios share: route checks, one wrk measurement, stream resets, waiting
for the workers to own their shards."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import httpx
import redis

from bench.config import BASELINE_DB, CONSUMER_GROUP, PRODUCT_DB, STREAM_KEY
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.results import Figure

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.context import Bench
    from bench.procs import Server
    from ingest_shared.keys import Keys

EVENTS_PATH = "/api/ingest/events"
WARMUP_S = 1.0
OWNED_POLL_S = 0.05


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


def shards_owned(client: redis.Redis, keys: Keys, consumers: Sequence[str]) -> bool:
    """True once every one of `consumers` is a live worker, every shard's lease is held by
    the owner the workers' deal gives it (ingest_worker.ownership.assign over the live ones)
    and that owner reads the shard's stream (it is a consumer of the group).

    A worker that joins takes shards away from the others on their next tick; until then a
    shard may have no owner, or its old one."""
    from ingest_worker.ownership import assign

    live = sorted(_text(member) for member in client.zrange(keys.workers, 0, -1))
    if not set(consumers) <= set(live):
        return False
    owners = assign(keys.shards, live)
    holders = client.mget([shard.lease() for shard in keys.shards])
    if not all(
        held is not None and _text(held) == owners.get(shard.tag)
        for shard, held in zip(keys.shards, holders, strict=True)
    ):
        return False
    for shard in keys.shards:
        try:
            readers = client.xinfo_consumers(shard.stream, CONSUMER_GROUP)
        except redis.ResponseError:  # the owner has not created the group yet
            return False
        if not any(c["name"] == owners[shard.tag].encode() for c in readers):
            return False
    return True


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def wait_owned(
    client: redis.Redis,
    keys: Keys,
    consumers: Sequence[str],
    workers: Sequence[Server],
    timeout_s: float,
) -> str | None:
    """Wait until :func:`shards_owned`; None then, else why not (timeout, a worker exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if shards_owned(client, keys, consumers):
            return None
        dead = [w for w in workers if not w.alive()]
        if dead:
            return f"{dead[0].name} exited: {dead[0].log_tail(3)}"
        time.sleep(OWNED_POLL_S)
    return f"the workers did not own every shard within {timeout_s:.0f} s"
