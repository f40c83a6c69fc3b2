"""Scenario 11: agents' protocols against the JSON batch route, paired in each repetition.

Telegraf's line protocol (batches of 1,000 lines), Prometheus remote-write (2,000 samples) and
OTLP/HTTP protobuf (1,000 points), events/s, each beside JSON batches of 1,000 events on the
same producer process (``bench.protocol_payloads`` builds the bodies with the protocols' own
encoders). Producer only: the stream is trimmed after each run, no worker drains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from bench.loadgen import log
from bench.profile import profiled
from bench.protocol_payloads import Payload, otlp_export, remote_write_request, telegraf_batch
from bench.scenarios.common import measure, reset_streams, scratch_figure, warm_up

if TYPE_CHECKING:
    from pathlib import Path

    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure

SCENARIO = 11
JSON_BATCH = 1_000
JSON_KEY = "protocols.json.1000"
# Issue 19: each protocol at least this share of the JSON batch route's events/s.
TARGET_RATIO = 0.7
PROTOCOLS = {
    "influx": ("InfluxDB line protocol, Telegraf batches of 1,000 lines", telegraf_batch),
    "remotewrite": ("Prometheus remote-write, 2,000 samples", remote_write_request),
    "otlp": ("OTLP/HTTP protobuf, 1,000 points", otlp_export),
}


def _check(server: Server, payload: Payload) -> str | None:
    """None if the producer takes ``payload`` (a 2xx), else why not."""
    headers = {"Content-Type": payload.content_type}
    if payload.encoding:
        headers["Content-Encoding"] = payload.encoding
    try:
        response = httpx.post(
            server.base_url + payload.path, content=payload.body, headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        return f"POST {payload.path}: {exc}"
    if not response.is_success:
        return f"POST {payload.path} -> {response.status_code}: {response.text[:200]}"
    return None


def _args(payload: Payload, file: Path) -> list[str]:
    return [payload.path, str(file), payload.content_type, payload.encoding]


def run(bench: Bench) -> None:
    cfg, results = bench.config, bench.results
    conns = cfg.batch_connections
    json_fig = results.figure(
        JSON_KEY, SCENARIO, f"JSON batches of {JSON_BATCH} (paired), {conns} conns", "events/s"
    )
    lineup: list[tuple[Figure, Payload, Path]] = []
    for name, (label, build) in PROTOCOLS.items():
        key = f"protocols.{name}"
        fig = results.figure(key, SCENARIO, f"{label}, {conns} conns", "events/s")
        results.target(
            f"protocol_{name}_vs_json",
            "vs JSON batches",
            key,
            TARGET_RATIO,
            versus=JSON_KEY,
            versus_label="JSON batch",
        )
        payload = build()
        file = bench.workdir / f"protocol-{name}.bin"
        file.write_bytes(payload.body)
        lineup.append((fig, payload, file))

    server = bench.producer(1)
    if server is None:
        for fig in (json_fig, *(f for f, _, _ in lineup)):
            fig.fail(bench.why_unavailable("producer-1p"))
        return
    ready = []
    for fig, payload, file in lineup:
        problem = _check(server, payload)
        if problem is not None:
            fig.fail(problem)
            continue
        warm_up(bench, server, "post_file.lua", conns, _args(payload, file))
        ready.append((fig, payload, file))
    warm_up(bench, server, "post_batch.lua", conns, [str(JSON_BATCH)])
    reset_streams(bench)
    for rep in range(cfg.repetitions):
        log(f"scenario 11 protocols: repetition {rep + 1}/{cfg.repetitions}")
        measure(
            bench, server, json_fig, "post_batch.lua",
            connections=conns, script_args=[str(JSON_BATCH)], per_request=JSON_BATCH,
        )  # fmt: skip
        reset_streams(bench)
        for fig, payload, file in ready:
            measure(
                bench, server, fig, "post_file.lua",
                connections=conns, script_args=_args(payload, file), per_request=payload.samples,
            )  # fmt: skip
            reset_streams(bench)
    if cfg.profile:
        for fig, payload, file in ready:
            log(f"scenario 11: profiled repetition, {fig.key} (not measured)")
            with profiled(bench, fig.key.replace(".", "-"), server):
                measure(
                    bench, server, scratch_figure(fig, "profiled"), "post_file.lua",
                    connections=conns, script_args=_args(payload, file),
                    per_request=payload.samples,
                )  # fmt: skip
            reset_streams(bench)
