"""The producer's /metrics, request ids, and how refusals by Redis are reported."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from tests.ports import free_port

from ingest_producer.asgi import build_app
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
ROUTE = 'route="/api/ingest/events"'
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.5}
BAD = {"source": "sensor-a", "metric": "cpu load", "value": 1.5}


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample of /metrics as ``name{label="value",...}`` (labels sorted)."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    # Prometheus' own type, the charset named once.
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_counters_move_by_exactly_the_known_workload(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    settings = Settings(stream_shards=1, redis_url=redis_url)
    async with serve(build_app(settings)) as http:
        before = await scrape(http)
        for _ in range(3):
            assert (await http.post(URL, json=EVENT)).status_code == 200
        assert (await http.post(URL, json=BAD)).status_code == 422
        assert (await http.post(URL, json=[EVENT] * 5)).status_code == 200
        assert (await http.post(URL, json=[EVENT, BAD, EVENT, BAD])).status_code == 422
        assert (await http.get("/no/such/route")).status_code == 404
        after = await scrape(http)

    def requests(status: int) -> float:
        name = f'ingest_producer_requests_total{{method="POST",{ROUTE},status="{status}"}}'
        return delta(before, after, name)

    assert delta(before, after, "ingest_producer_events_accepted_total{}") == 8
    assert delta(before, after, 'ingest_producer_events_rejected_total{reason="invalid"}') == 5
    assert requests(200) == 4
    assert requests(422) == 2
    unmatched = 'ingest_producer_requests_total{method="GET",route="unmatched",status="404"}'
    assert delta(before, after, unmatched) == 1
    latency = f"ingest_producer_request_duration_seconds_count{{{ROUTE}}}"
    assert delta(before, after, latency) == 6


async def test_queue_gauges_are_sampled_in_the_background(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    settings = Settings(stream_shards=1, redis_url=redis_url)
    async with serve(build_app(settings)) as http:
        assert (await http.post(URL, json=[EVENT] * 7)).status_code == 200
        await redis.xadd(settings.dead_letter_key, {"reason": "test"})

        async def sampled() -> bool:
            samples = await scrape(http)
            return samples.get("ingest_queue_length{}") == 7.0

        await eventually(sampled)
        samples = await scrape(http)
    assert samples["ingest_queue_lag{}"] == 7
    assert samples["ingest_queue_backlog{}"] == 7
    assert samples["ingest_queue_pending{}"] == 0
    assert samples["ingest_queue_entries_added{}"] == 7
    assert samples["ingest_queue_consumers{}"] == 0
    assert samples["ingest_dead_letter_length{}"] == 1


async def test_request_id_is_echoed_when_plain_and_made_up_otherwise(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(Settings(stream_shards=1, redis_url=redis_url))) as http:
        mine = await http.post(URL, json=EVENT, headers={"X-Request-ID": "req-42.a"})
        weird = await http.post(URL, json=EVENT, headers={"X-Request-ID": "a b\tc"})
        none = [await http.get("/health") for _ in range(2)]
    assert mine.headers["x-request-id"] == "req-42.a"
    assert weird.headers["x-request-id"] not in ("", "a b\tc")
    assert none[0].headers["x-request-id"] != none[1].headers["x-request-id"]


async def test_metrics_off_removes_the_route(redis_url: str, serve: AppClient) -> None:
    settings = Settings(stream_shards=1, redis_url=redis_url, metrics_enabled=False)
    async with serve(build_app(settings)) as http:
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.post(URL, json=EVENT)).status_code == 200


async def test_a_command_refused_by_the_acl_is_a_503_naming_it_and_one_error_line(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    await redis.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "no-fcall", "on", ">secret-password", "~*", "&*", "+@all", "-fcall"
    )
    try:
        url = redis_url.replace("redis://", "redis://no-fcall:secret-password@")
        with structlog.testing.capture_logs() as logs:
            async with serve(build_app(Settings(stream_shards=1, redis_url=url))) as http:
                response = await http.post(URL, json=EVENT)
                after = await scrape(http)
    finally:
        await redis.execute_command("ACL", "DELUSER", "no-fcall")  # type: ignore[no-untyped-call]
    assert response.status_code == 503
    assert "NOPERM" in response.json()["detail"]
    assert "fcall" in response.json()["detail"].lower()
    refused = [log for log in logs if log["event"] == "redis_permission_denied"]
    assert [log["log_level"] for log in refused] == ["error"]
    assert not [log for log in logs if log["event"] == "redis_unavailable"]
    assert after['ingest_producer_redis_errors_total{kind="permission"}'] >= 1


async def test_out_of_memory_is_a_503_that_says_so(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(Settings(stream_shards=1, redis_url=redis_url))) as http:
        await redis.config_set("maxmemory", 1)
        try:
            with structlog.testing.capture_logs() as logs:
                response = await http.post(URL, json=EVENT)
        finally:
            await redis.config_set("maxmemory", 0)
    assert response.status_code == 503
    assert "out of memory" in response.json()["detail"]
    assert [log["log_level"] for log in logs if log["event"] == "redis_out_of_memory"] == ["error"]


async def test_several_processes_report_one_sum(redis: Redis, redis_url: str) -> None:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_HTTP_WORKERS": "2",
        "INGEST_LOG_FORMAT": "json",
    }
    producer = Path(sys.executable).parent / "ingest-producer"
    process = await asyncio.create_subprocess_exec(
        str(producer), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Fresh connections per request, so both processes serve some of them.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/ready")).status_code == 200
                return False

            await eventually(up, 20.0)
            for _ in range(40):
                assert (await http.post(URL, json=[EVENT] * 3)).status_code == 200
            totals = {
                (await scrape(http))["ingest_producer_events_accepted_total{}"] for _ in range(6)
            }
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    assert totals == {120.0}
