"""The agent protocol routes over HTTP: InfluxDB line protocol, remote-write 1.0, OTLP/HTTP.

Every documented answer of ``ingest_producer.agent_routes``: what is enqueued (read back from
the stream), what is dead-lettered, each protocol's error body, the limits, backpressure,
Redis being down, and every credential form.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import math
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

import cramjam
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2  # type: ignore[import-untyped]  # no py.typed upstream
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import REGISTRY
from tests.ports import free_port

from ingest_producer import agent_intake, agent_routes
from ingest_producer.asgi import build_app
from ingest_producer.protocols.lineprotocol import decode_line_protocol
from ingest_producer.protocols.remote_write_pb2 import Label, Sample, TimeSeries, WriteRequest
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    import httpx
    from redis.asyncio import Redis
    from tests.conftest import AppClient

WRITE_KEY = "agent-write-key-0123456789"
READ_KEY = "agent-read-key-0123456789ab"
SETTINGS = Settings(
    stream_shards=1,
    write_keys=frozenset({WRITE_KEY}),
    read_keys=frozenset({READ_KEY}),
    protocol_max_bytes=2 * 1024 * 1024,
)
STREAM = SETTINGS.stream_key
DEAD_LETTER = SETTINGS.keys.shards[0].dead_letter
TOKEN = {"authorization": f"Token {WRITE_KEY}"}
AT_MS = now_ms() // 1000 * 1000 - 60_000  # a minute ago, on a second
AT_NS = AT_MS * 1_000_000
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
V2 = "/api/v2/write"
V1 = "/write"
RW = "/api/v1/write"
OTLP = "/v1/metrics"
RW_HEADERS = {
    **TOKEN,
    "content-type": "application/x-protobuf",
    "content-encoding": "snappy",
    "x-prometheus-remote-write-version": "0.1.0",
}
OTLP_PB = {**TOKEN, "content-type": "application/x-protobuf"}
OTLP_JSON = {**TOKEN, "content-type": "application/json"}
WAIT_S = 5.0


@pytest.fixture
def app_with(redis: Redis, redis_url: str, serve: AppClient) -> Callable[..., Any]:
    """Serve the app with SETTINGS changed by keyword arguments."""

    def start(**changes: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        settings = dataclasses.replace(SETTINGS, redis_url=redis_url, **changes)
        return serve(build_app(settings))

    return start


@pytest.fixture
async def client(app_with: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_with() as client:
        yield client


async def entries(redis: Redis, stream: str = STREAM) -> list[dict[str, Any]]:
    """The stream's entries as text fields, labels decoded."""
    found = []
    for _, fields in await call(redis, "XRANGE", stream, "-", "+"):
        entry = {name.decode(): value.decode() for name, value in fields.items()}
        if "labels" in entry:
            entry["labels"] = json.loads(entry["labels"])
        found.append(entry)
    return found


def entry(source: str, metric: str, value: float, at_ms: int, **labels: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "source": source,
        "metric": metric,
        "value": repr(value),
        "occurredAt": format_ms(at_ms),
    }
    if labels:
        found["labels"] = labels
    return found


def counted(protocol: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "ingest_producer_protocol_samples_total", {"protocol": protocol, "outcome": outcome}
    )
    return value or 0.0


# --- InfluxDB line protocol -----------------------------------------------------------------


async def test_v2_write_enqueues_one_sample_per_numeric_field_with_tags_as_labels(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    body = (
        f'cpu,host=web-1,cpu=cpu0 usage_idle=90.5,usage_user=3i,up=true,note="x" {AT_NS}\n'
        f"temperature,device_id=probe-7 value=21.5 {AT_NS + 1_000_000}\n"
    )
    before = counted("influx", "skipped")

    response = await client.post(
        V2, params={"org": "o", "bucket": "b"}, content=body, headers=TOKEN
    )

    assert response.status_code == 204, response.text
    assert await entries(redis) == [
        entry("web-1", "cpu_usage_idle", 90.5, AT_MS, cpu="cpu0"),
        entry("web-1", "cpu_usage_user", 3.0, AT_MS, cpu="cpu0"),
        entry("web-1", "cpu_up", 1.0, AT_MS, cpu="cpu0"),
        entry("probe-7", "temperature", 21.5, AT_MS + 1),
    ]
    assert counted("influx", "skipped") == before + 1  # the string field


@pytest.mark.parametrize(
    ("path", "precision", "stamp"),
    [
        (V2, None, AT_NS),
        (V2, "ns", AT_NS),
        (V2, "us", AT_MS * 1000),
        (V2, "ms", AT_MS),
        (V2, "s", AT_MS // 1000),
        (V1, None, AT_NS),
        (V1, "n", AT_NS),
        (V1, "u", AT_MS * 1000),
        (V1, "ms", AT_MS),
        (V1, "s", AT_MS // 1000),
        (V1, "m", AT_MS // 60_000),
        (V1, "h", AT_MS // 3_600_000),
    ],
)
async def test_timestamps_are_read_in_the_requested_precision(
    client: httpx.AsyncClient, redis: Redis, path: str, precision: str | None, stamp: int
) -> None:
    params = {"db": "telegraf"} | ({"precision": precision} if precision else {})
    response = await client.post(
        path, params=params, content=f"load,host=h1 value=1 {stamp}", headers=TOKEN
    )

    assert response.status_code == 204, response.text
    unit_ms = {"m": 60_000, "h": 3_600_000}.get(precision or "", 0)
    expected = AT_MS // unit_ms * unit_ms if unit_ms else AT_MS
    [found] = await entries(redis)
    assert found["occurredAt"] == format_ms(expected)


@pytest.mark.parametrize(("path", "precision"), [(V2, "m"), (V2, "h"), (V1, "d"), (V2, "")])
async def test_an_unknown_precision_is_a_400_in_influxdbs_shape(
    client: httpx.AsyncClient, redis: Redis, path: str, precision: str
) -> None:
    response = await client.post(
        path, params={"precision": precision or "x"}, content="m,host=a value=1", headers=TOKEN
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "precision" in response.json()["message"]
    assert await redis.xlen(STREAM) == 0


async def test_a_line_without_timestamp_is_stamped_at_receipt(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    before = now_ms()
    response = await client.post(V2, content="door,entity_id=front value=1", headers=TOKEN)
    after = now_ms()

    assert response.status_code == 204
    [found] = await entries(redis)
    stamped = int((await call(redis, "XRANGE", STREAM, "-", "+"))[0][0].split(b"-")[0])
    assert found["occurredAt"] == format_ms(stamped)
    assert before <= stamped <= after


@pytest.mark.parametrize("path", [V1, V2])
async def test_a_gzip_body_is_read(client: httpx.AsyncClient, redis: Redis, path: str) -> None:
    lines = "".join(f"m,host=h{i} value={i} {AT_NS}\n" for i in range(50))

    response = await client.post(
        path,
        content=gzip.compress(lines.encode()),
        headers={**TOKEN, "content-encoding": "gzip", "content-type": "text/plain"},
    )

    assert response.status_code == 204, response.text
    assert [e["source"] for e in await entries(redis)] == [f"h{i}" for i in range(50)]


async def test_a_broken_gzip_body_is_a_400_and_another_encoding_a_415(
    client: httpx.AsyncClient,
) -> None:
    broken = await client.post(
        V2, content=b"not gzip", headers={**TOKEN, "content-encoding": "gzip"}
    )
    brotli = await client.post(V2, content=b"x", headers={**TOKEN, "content-encoding": "br"})

    assert broken.status_code == 400
    assert broken.json()["code"] == "invalid"
    assert brotli.status_code == 415
    assert "Content-Encoding" in brotli.json()["message"]


async def test_a_partly_bad_batch_enqueues_the_valid_lines_and_dead_letters_the_bad_ones(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    old = (now_ms() - SETTINGS.retention_ms - 3_600_000) * 1_000_000
    good = [f"cpu,host=a value=1 {AT_NS}", f"cpu,host=b value=2 {AT_NS}"]
    syntax = "cpu,host=c value="
    no_source = f"cpu,rack=r1 value=3 {AT_NS}"
    bad_label = f"cpu,host=d,1st=x value=4 {AT_NS}"  # a label name starts with a letter or _
    too_old = f"cpu,host=e value=5 {old}"
    body = "\n".join([good[0], syntax, no_source, good[1], bad_label, too_old])

    response = await client.post(V2, content=body, headers=TOKEN)

    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "invalid"
    message = answer["message"]
    assert "4 line(s) or sample(s) refused and dead-lettered" in message
    assert "2 sample(s) enqueued" in message
    assert repr(syntax) in message
    assert repr(no_source) in message
    assert [e["source"] for e in await entries(redis)] == ["a", "b"]
    letters = await call(redis, "XRANGE", DEAD_LETTER, "-", "+")
    found = [{n.decode(): v.decode() for n, v in fields.items()} for _, fields in letters]
    assert len(found) == 4
    assert all(f["reason"].startswith("line protocol: ") for f in found)
    assert all(f["consumer"] == "ingest-producer" for f in found)
    payloads = [json.loads(f["payload"]) for f in found]
    assert payloads[0] == {"line": syntax}
    assert payloads[1] == {"line": no_source}
    assert payloads[2]["source"] == "d"
    assert json.loads(payloads[2]["labels"]) == {"1st": "x"}
    assert found[2]["reason"].startswith("line protocol: labels: names must be")
    assert payloads[3]["source"] == "e"
    assert "retention" in found[3]["reason"]


async def test_an_all_bad_batch_enqueues_nothing_and_names_the_lines(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    lines = [f"bad line {i}" for i in range(8)]

    response = await client.post(V1, content="\n".join(lines), headers=TOKEN)

    assert response.status_code == 400
    message = response.json()["message"]
    assert "8 line(s) or sample(s) refused" in message
    assert "0 sample(s) enqueued" in message
    assert "and 3 more" in message  # five listed
    assert await redis.xlen(DEAD_LETTER) == 8
    assert await redis.xlen(STREAM) == 0


async def test_a_body_of_only_string_fields_or_comments_is_a_204_with_nothing_enqueued(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    response = await client.post(V2, content='# a comment\nlog,host=a msg="hi"\n\n', headers=TOKEN)

    assert response.status_code == 204
    assert await redis.xlen(STREAM) == 0


async def test_bodies_larger_than_the_protocol_limit_are_413_before_and_after_gunzip(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    limit = SETTINGS.protocol_max_bytes
    raw = await client.post(V2, content=b"#" * (limit + 1), headers=TOKEN)
    bomb = gzip.compress(b"#" * (limit + 1))
    gzipped = await client.post(V1, content=bomb, headers={**TOKEN, "content-encoding": "gzip"})

    for response in (raw, gzipped):
        assert response.status_code == 413
        assert response.json()["code"] == "request too large"
    assert len(bomb) < SETTINGS.max_body_bytes


async def test_the_protocol_limit_not_the_json_limit_bounds_these_routes(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    padding = b"# padding\n" * (SETTINGS.max_body_bytes // 10 + 1)  # over INGEST_MAX_BODY_BYTES
    body = padding + f"m,host=a value=1 {AT_NS}".encode()

    response = await client.post(V2, content=body, headers=TOKEN)

    assert len(body) > SETTINGS.max_body_bytes
    assert response.status_code == 204, response.text
    assert await redis.xlen(STREAM) == 1


async def test_the_default_limit_takes_20_mib_decompressed(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    body = b"#" * (20 * 1024 * 1024) + f"\nm,host=a value=1 {AT_NS}".encode()

    async with app_with(protocol_max_bytes=Settings().protocol_max_bytes) as client:
        response = await client.post(
            V2, content=gzip.compress(body), headers={**TOKEN, "content-encoding": "gzip"}
        )

    assert response.status_code == 204, response.text
    assert await redis.xlen(STREAM) == 1


async def test_ping_ready_and_the_query_stub_answer_as_influxdb_does(
    client: httpx.AsyncClient,
) -> None:
    ping = await client.get("/ping")
    head = await client.head("/ping")
    ready = await client.get("/api/v2/ready")
    query_get = await client.get("/query", params={"q": "SHOW DATABASES", "p": WRITE_KEY})
    query_post = await client.post(
        "/query", params={"q": "CREATE DATABASE telegraf"}, headers=TOKEN
    )
    query_anonymous = await client.post("/query", params={"q": "CREATE DATABASE telegraf"})

    for response in (ping, head):
        assert response.status_code == 204
        assert response.headers["x-influxdb-version"]
        assert response.headers["x-influxdb-build"]
        assert response.content == b""
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    for response in (query_get, query_post):
        assert response.status_code == 200
        assert response.json() == {"results": []}
    assert query_anonymous.status_code == 401
    assert query_anonymous.json()["code"] == "unauthorized"


# --- credentials ----------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    ("path", "headers", "params"),
    [
        (V2, {"authorization": f"Token {WRITE_KEY}"}, {}),
        (V2, {"authorization": f"Bearer {WRITE_KEY}"}, {}),
        (V2, {"x-api-key": WRITE_KEY}, {}),
        (V2, basic("telegraf", WRITE_KEY), {}),
        (V2, basic(WRITE_KEY, ""), {}),
        (V1, basic("telegraf", WRITE_KEY), {}),
        (V1, {}, {"u": "telegraf", "p": WRITE_KEY}),
        (V1, {}, {"u": WRITE_KEY}),
        (RW, basic("prometheus", WRITE_KEY), {}),
        (OTLP, {"authorization": f"Bearer {WRITE_KEY}"}, {}),
    ],
)
async def test_every_credential_form_of_a_write_key_is_accepted(
    client: httpx.AsyncClient,
    redis: Redis,
    path: str,
    headers: dict[str, str],
    params: dict[str, str],
) -> None:
    body, extra = _one_sample_body(path)

    response = await client.post(path, params=params, content=body, headers=headers | extra)

    assert response.status_code in (200, 204), response.text
    assert await redis.xlen(STREAM) == 1


@pytest.mark.parametrize("path", [V2, V1, RW, OTLP])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Token not-a-key-of-this-service"}, 401),
        (basic("telegraf", "wrong-password-xxxxxxxx"), 401),
        ({"authorization": "Basic !!!not-base64"}, 401),
        ({"authorization": f"Token {READ_KEY}"}, 403),
        (basic("grafana", READ_KEY), 403),
    ],
)
async def test_missing_unknown_and_read_only_keys_are_refused(
    client: httpx.AsyncClient, redis: Redis, path: str, headers: dict[str, str], status: int
) -> None:
    body, extra = _one_sample_body(path)

    response = await client.post(path, content=body, headers=headers | extra)

    assert response.status_code == status
    assert await redis.xlen(STREAM) == 0


async def test_query_parameter_credentials_are_read_by_the_v1_routes_only(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    body = f"m,host=a value=1 {AT_NS}"
    v2 = await client.post(V2, params={"u": "x", "p": WRITE_KEY}, content=body)
    v1_read_key = await client.post(V1, params={"u": "x", "p": READ_KEY}, content=body)

    assert v2.status_code == 401
    assert v1_read_key.status_code == 403
    assert await redis.xlen(STREAM) == 0


async def test_the_json_route_still_reads_only_bearer_and_x_api_key(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    event = {"source": "a", "metric": "m", "value": 1.0}
    token = await client.post("/api/ingest/events", json=event, headers=TOKEN)
    basic_auth = await client.post("/api/ingest/events", json=event, headers=basic("u", WRITE_KEY))
    bearer = await client.post(
        "/api/ingest/events", json=event, headers={"authorization": f"Bearer {WRITE_KEY}"}
    )

    assert token.status_code == 401
    assert basic_auth.status_code == 401
    assert "Bearer" in token.json()["detail"]
    assert bearer.status_code == 200
    assert await redis.xlen(STREAM) == 1


# --- Prometheus remote-write ----------------------------------------------------------------


def series(labels: dict[str, str], *samples: tuple[float, int]) -> TimeSeries:
    return TimeSeries(
        labels=[Label(name=name, value=value) for name, value in labels.items()],
        samples=[Sample(value=value, timestamp=stamp) for value, stamp in samples],
    )


def remote_write(*items: TimeSeries) -> bytes:
    return bytes(cramjam.snappy.compress_raw(WriteRequest(timeseries=items).SerializeToString()))


async def test_remote_write_enqueues_samples_and_skips_nan_inf_and_stale_markers(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    up = {"__name__": "up", "instance": "node-1:9100", "job": "node"}
    temp = {"__name__": "temp_celsius", "instance": "probe-7", "room": "a(1),b"}
    skipped_before = counted("prometheus", "skipped")
    accepted_before = REGISTRY.get_sample_value("ingest_producer_events_accepted_total") or 0.0
    body = remote_write(
        series(up, (1.0, AT_MS), (math.nan, AT_MS + 1), (0.0, AT_MS + 2)),
        series(temp, (21.5, AT_MS), (math.inf, AT_MS + 1), (STALE_NAN, AT_MS + 2)),
    )

    response = await client.post(RW, content=body, headers=RW_HEADERS)

    assert response.status_code == 204, response.text
    assert await entries(redis) == [
        entry("node-1:9100", "up", 1.0, AT_MS, job="node"),
        entry("node-1:9100", "up", 0.0, AT_MS + 2, job="node"),
        entry("probe-7", "temp_celsius", 21.5, AT_MS, room="a(1),b"),
    ]
    assert counted("prometheus", "skipped") == skipped_before + 3
    accepted = REGISTRY.get_sample_value("ingest_producer_events_accepted_total")
    assert accepted == accepted_before + 3  # counted with the JSON routes' events


async def test_remote_write_2_is_refused_with_415_in_plain_text(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    headers = RW_HEADERS | {
        "content-type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"
    }

    response = await client.post(RW, content=remote_write(), headers=headers)

    assert response.status_code == 415
    assert response.headers["content-type"].startswith("text/plain")
    assert "remote-write 2.0" in response.text
    assert await redis.xlen(STREAM) == 0


async def test_remote_write_with_some_refused_series_enqueues_the_rest_and_answers_204(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    refused_before = counted("prometheus", "refused")
    body = remote_write(
        series({"__name__": "up", "instance": "a"}, (1.0, AT_MS)),
        series({"__name__": "up", "job": "no-instance"}, (1.0, AT_MS), (1.0, AT_MS + 1)),
        series({"__name__": "job rate 5m", "instance": "a"}, (2.0, AT_MS)),
        # A recording rule's name (with ":") is a metric like any other.
        series({"__name__": "job:rate:5m", "instance": "a"}, (3.0, AT_MS)),
    )

    response = await client.post(RW, content=body, headers=RW_HEADERS)

    assert response.status_code == 204, response.text
    assert [e["metric"] for e in await entries(redis)] == ["up", "job:rate:5m"]
    assert counted("prometheus", "refused") == refused_before + 3


async def test_remote_write_with_every_sample_refused_is_a_400_naming_them(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    body = remote_write(series({"__name__": "up", "job": "no-instance"}, (1.0, AT_MS)))

    response = await client.post(RW, content=body, headers=RW_HEADERS)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert "no instance label" in response.text
    assert "none enqueued" in response.text
    assert await redis.xlen(STREAM) == 0


async def test_remote_write_bodies_that_cannot_be_read_are_400_and_too_large_413(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    not_snappy = await client.post(RW, content=b"\xff\xff\xff\xff\xff", headers=RW_HEADERS)
    not_protobuf = await client.post(
        RW, content=bytes(cramjam.snappy.compress_raw(b"\xff" * 20)), headers=RW_HEADERS
    )
    huge = bytes(cramjam.snappy.compress_raw(b"\0" * (SETTINGS.protocol_max_bytes + 1)))
    too_large = await client.post(RW, content=huge, headers=RW_HEADERS)
    gzip_body = await client.post(
        RW, content=b"x", headers=RW_HEADERS | {"content-encoding": "gzip"}
    )

    assert not_snappy.status_code == 400
    assert "snappy" in not_snappy.text
    assert not_protobuf.status_code == 400
    assert "WriteRequest" in not_protobuf.text
    assert too_large.status_code == 413
    assert too_large.headers["content-type"].startswith("text/plain")
    assert gzip_body.status_code == 415
    assert await redis.xlen(STREAM) == 0


# --- OTLP/HTTP ------------------------------------------------------------------------------


def _attributes(**values: str) -> list[KeyValue]:
    return [KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in values.items()]


def otlp_request(*metrics: Metric, **resource: str) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=_attributes(**resource)),
                scope_metrics=[ScopeMetrics(metrics=metrics)],
            )
        ]
    )


def gauge(name: str, value: float, **attributes: str) -> Metric:
    point = NumberDataPoint(
        as_double=value, time_unix_nano=AT_NS, attributes=_attributes(**attributes)
    )
    return Metric(name=name, gauge=Gauge(data_points=[point]))


def counter(name: str, value: int) -> Metric:
    point = NumberDataPoint(as_int=value, time_unix_nano=AT_NS)
    temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return Metric(
        name=name,
        sum=Sum(data_points=[point], aggregation_temporality=temporality, is_monotonic=True),
    )


def histogram(name: str, points: int) -> Metric:
    data = [HistogramDataPoint(count=1, time_unix_nano=AT_NS) for _ in range(points)]
    return Metric(name=name, histogram=Histogram(data_points=data))


OTLP_BODY = otlp_request(
    gauge("room_temp", 21.5, room="kitchen"),
    counter("requests", 7),
    **{"host.name": "edge-1", "service.name": "thermo"},
)
OTLP_ENTRIES = [
    entry("edge-1", "room_temp", 21.5, AT_MS, room="kitchen", **{"service.name": "thermo"}),
    entry("edge-1", "requests", 7.0, AT_MS, temporality="cumulative", **{"service.name": "thermo"}),
]


async def test_otlp_protobuf_is_enqueued_and_answered_in_protobuf(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    response = await client.post(OTLP, content=OTLP_BODY.SerializeToString(), headers=OTLP_PB)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-protobuf")
    reply = ExportMetricsServiceResponse.FromString(response.content)
    assert not reply.HasField("partial_success")
    assert await entries(redis) == OTLP_ENTRIES


async def test_otlp_json_with_gzip_is_enqueued_and_answered_in_json(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    body = gzip.compress(json_format.MessageToJson(OTLP_BODY).encode())

    response = await client.post(
        OTLP, content=body, headers=OTLP_JSON | {"content-encoding": "gzip"}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    assert await entries(redis) == OTLP_ENTRIES


@pytest.mark.parametrize("headers", [OTLP_PB, OTLP_JSON])
async def test_refused_otlp_points_are_reported_as_partial_success(
    client: httpx.AsyncClient, redis: Redis, headers: dict[str, str]
) -> None:
    request = otlp_request(
        gauge("ok", 1.0),
        histogram("latency", 3),
        gauge("bad name!", 2.0),
        **{"host.name": "edge-1"},
    )
    body = (
        request.SerializeToString()
        if headers is OTLP_PB
        else json_format.MessageToJson(request).encode()
    )

    response = await client.post(OTLP, content=body, headers=headers)

    assert response.status_code == 200, response.text
    if headers is OTLP_PB:
        partial = ExportMetricsServiceResponse.FromString(response.content).partial_success
        rejected, message = partial.rejected_data_points, partial.error_message
    else:
        partial = response.json()["partialSuccess"]
        rejected, message = int(partial["rejectedDataPoints"]), partial["errorMessage"]
    assert rejected == 4
    assert "histogram" in message
    assert "bad name!" in message
    assert [e["metric"] for e in await entries(redis)] == ["ok"]


@pytest.mark.parametrize("headers", [OTLP_PB, OTLP_JSON])
async def test_an_otlp_body_that_cannot_be_read_is_a_400_status_in_the_request_type(
    client: httpx.AsyncClient, redis: Redis, headers: dict[str, str]
) -> None:
    response = await client.post(OTLP, content=b"\xff\x00garbage{", headers=headers)

    assert response.status_code == 400
    if headers is OTLP_PB:
        status = status_pb2.Status.FromString(response.content)
        code, message = status.code, status.message
    else:
        code, message = response.json()["code"], response.json()["message"]
    assert code == 3  # INVALID_ARGUMENT
    assert "ExportMetricsServiceRequest" in message
    assert await redis.xlen(STREAM) == 0


async def test_otlp_with_another_content_type_is_a_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        OTLP, content=b"{}", headers=TOKEN | {"content-type": "text/plain"}
    )

    assert response.status_code == 415
    assert status_pb2.Status.FromString(response.content).code == 3


# --- backpressure and Redis failures --------------------------------------------------------


def _one_sample_body(path: str) -> tuple[bytes, dict[str, str]]:
    """A one-sample body for ``path`` and the headers its protocol needs (no credentials)."""
    if path in (V1, V2):
        return f"m,host=a value=1 {AT_NS}".encode(), {}
    if path == RW:
        body = remote_write(series({"__name__": "m", "instance": "a"}, (1.0, AT_MS)))
        return body, {k: v for k, v in RW_HEADERS.items() if k != "authorization"}
    return otlp_request(gauge("m", 1.0), **{"host.name": "a"}).SerializeToString(), {
        "content-type": "application/x-protobuf"
    }


def assert_protocol_503(path: str, response: httpx.Response, needle: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    if path in (V1, V2):
        assert response.json()["code"] == "unavailable"
        assert needle in response.json()["message"]
    elif path == RW:
        assert needle in response.text
    else:
        status = status_pb2.Status.FromString(response.content)
        assert status.code == 14  # UNAVAILABLE
        assert needle in status.message


@pytest.mark.parametrize("path", [V2, V1, RW, OTLP])
async def test_backpressure_is_a_503_with_retry_after_and_nothing_enqueued(
    app_with: Callable[..., Any], redis: Redis, path: str
) -> None:
    group = SETTINGS.consumer_group
    await redis.xgroup_create(STREAM, group, id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(STREAM, {"source": "s", "metric": "cpu", "value": str(i)})
    body, headers = _one_sample_body(path)

    async with app_with(max_backlog=2) as client:
        deadline = time.monotonic() + WAIT_S
        while not (await client.get("/ready")).json().get("overloaded"):
            assert time.monotonic() < deadline, "the backlog monitor never saw the backlog"
            await asyncio.sleep(0.05)
        response = await client.post(path, content=body, headers=headers | TOKEN)

    assert_protocol_503(path, response, "INGEST_MAX_BACKLOG")
    assert await redis.xlen(STREAM) == 3


@pytest.mark.parametrize("path", [V2, V1, RW, OTLP])
async def test_redis_down_is_a_503_with_retry_after_never_a_500(
    serve: AppClient, path: str
) -> None:
    settings = dataclasses.replace(SETTINGS, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    body, headers = _one_sample_body(path)

    async with serve(build_app(settings)) as client:
        response = await client.post(path, content=body, headers=headers | TOKEN)

    assert_protocol_503(path, response, "unavailable")


async def test_the_rate_limit_is_a_503_with_retry_after_not_a_429(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    body = "\n".join(f"m,host=h{i} value={i} {AT_NS}" for i in range(3))

    async with app_with(rate_limit=4, rate_window_ms=60_000) as client:
        first = await client.post(V2, content=body, headers=TOKEN)
        second = await client.post(V2, content=body, headers=TOKEN)
        too_big = await client.post(
            V2, content=body + "\n" + body.replace("=h", "=x"), headers=TOKEN
        )

    assert first.status_code == 204
    assert second.status_code == 503
    assert int(second.headers["retry-after"]) >= 1
    assert "rate limit" in second.json()["message"]
    assert too_big.status_code == 413
    assert await redis.xlen(STREAM) == 3


async def test_the_source_mapping_settings_are_followed(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    lines = f"temp,sensor=s-1,host=ignored value=1 {AT_NS}\ntemp,room=a value=2 {AT_NS}"
    scrape = remote_write(series({"__name__": "up", "job": "node", "instance": "i"}, (1.0, AT_MS)))
    export = otlp_request(gauge("g", 3.0), **{"device.id": "dev-9", "host.name": "h"})

    async with app_with(
        influx_source_tags=("sensor",),
        influx_default_source="gateway-1",
        prometheus_source_label="job",
        otlp_source_attributes=("device.id",),
    ) as client:
        influx = await client.post(V2, content=lines, headers=TOKEN)
        prometheus = await client.post(RW, content=scrape, headers=RW_HEADERS)
        otlp = await client.post(OTLP, content=export.SerializeToString(), headers=OTLP_PB)

    assert (influx.status_code, prometheus.status_code, otlp.status_code) == (204, 204, 200)
    assert [(e["source"], e.get("labels")) for e in await entries(redis)] == [
        ("s-1", {"host": "ignored"}),
        ("gateway-1", {"room": "a"}),
        ("node", {"instance": "i"}),
        ("dev-9", None),
    ]


@pytest.mark.parametrize("path", [V2, V1, RW, OTLP])
async def test_without_api_keys_a_browser_request_may_not_write(
    app_with: Callable[..., Any], redis: Redis, path: str
) -> None:
    body, extra = _one_sample_body(path)
    async with app_with(write_keys=(), read_keys=()) as open_client:
        refused = await open_client.post(
            path, content=body, headers={**extra, "origin": "https://evil.example"}
        )
        assert refused.status_code == 403, refused.text
        assert "Origin" in refused.text
        assert await redis.xlen(STREAM) == 0
        agent = await open_client.post(path, content=body, headers=extra)
        assert agent.status_code in (200, 204), agent.text
        assert await redis.xlen(STREAM) == 1


async def test_a_large_body_is_decoded_off_the_event_loop(
    client: httpx.AsyncClient, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[bool] = []

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return decode_line_protocol(*args)

    monkeypatch.setattr(agent_routes, "decode_line_protocol", recording)
    body = f"m,host=h value=1 {AT_NS}\n".encode()

    small = await client.post(V2, content=body, headers=TOKEN)
    monkeypatch.setattr(agent_intake, "OFFLOAD_BYTES", len(body) - 1)
    large = await client.post(V2, content=body, headers=TOKEN)

    assert (small.status_code, large.status_code) == (204, 204)
    assert threads == [True, False]  # inline below the threshold, in a thread above it
    assert await redis.xlen(STREAM) == 2


@pytest.mark.parametrize("path", [V2, RW, OTLP])
async def test_a_write_not_confirmed_durable_is_a_503_agents_retry(
    app_with: Callable[..., Any], redis: Redis, path: str
) -> None:
    body, extra = _one_sample_body(path)
    # No replica exists: the WAIT after the append never confirms it.
    changes = {"durability": "replicas", "durability_replicas": 1, "durability_timeout_ms": 50}
    async with app_with(**changes) as durable:
        response = await durable.post(path, content=body, headers={**TOKEN, **extra})

    assert_protocol_503(path, response, "may be enqueued")
    assert await redis.xlen(STREAM) == 1  # at least once: appended, not confirmed
