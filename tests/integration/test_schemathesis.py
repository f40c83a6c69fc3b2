"""Schemathesis over every operation of the producer's own OpenAPI document, with every check
this Schemathesis version has, against the real app on a real Redis.

Per operation: positive and negative cases from the examples, coverage and fuzzing phases.
Then stateful workflows along the links Schemathesis infers (a metric from the summary into
its range, a dead letter from the list into its DELETE), where use-after-free and the other
stateful checks apply. The NDJSON body goes through a registered serializer, and a body sent
with ``Content-Encoding: gzip`` is compressed, as the document says it must be.

A few rules cannot be stated in JSON Schema: a time window relative to the server's clock,
``from`` <= ``to``, how many buckets a range may have, fleet aggregations that need a
``source``. ``map_case`` brings positive cases inside them, using the product's own rule
functions, so that ``positive_data_acceptance`` still holds every positive case to a 2xx. Each
rule has its own regular tests. Generation is derandomized: CI runs the same cases every time;
raise ``MAX_EXAMPLES`` (and drop ``derandomize``) to hunt for more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from redis import Redis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from ingest_producer.asgi import build_app
from ingest_producer.openapi import NDJSON
from ingest_producer.reading import aggregates, params
from ingest_producer.reading.ranges import DEFAULT_SPAN_MS
from ingest_shared.schema import LABELS_MAX_BYTES, canonical_labels, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import Iterator

    from schemathesis import Case
    from schemathesis.generation.stateful.state_machine import APIStateMachine
    from schemathesis.schemas import BaseSchema
    from schemathesis.transport import SerializationContext

# Per operation and phase; see the report of a run for cases and time.
MAX_EXAMPLES = 200
STATEFUL_SCENARIOS = 60
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# Wide enough for any time of today's date with any offset (up to +-24 h): see _today.
WINDOW_MS = 3 * 86_400_000
# A slower answer fails the run (the max_response_time check).
MAX_RESPONSE_S = 5.0
CONFIG = {
    "checks": {
        # 413 is how the API refuses a batch over INGEST_MAX_BATCH (the array's maxItems).
        "negative_data_rejection": {
            "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
        },
        "max_response_time": MAX_RESPONSE_S,
    }
}
EVENTS = "/api/ingest/events"
RANGE = "/api/ingest/metrics/{metric}/range"
_GZIP = ("gzip", "x-gzip")

load_all_checks()
CASES: Counter[str] = Counter()


def _lines(value: object) -> bytes:
    """NDJSON: an array is its items, one per line; anything else is one line as it is."""
    if isinstance(value, bytes):  # a malformed body, sent as it is
        return value
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.serializer(NDJSON)
def ndjson_serializer(_: SerializationContext, value: object) -> bytes:
    return _lines(value)


def _gzip_body(case: Case[Any]) -> dict[str, Any]:
    """``data=``: the body compressed, when the case says ``Content-Encoding: gzip``."""
    headers: dict[str, Any] = dict(case.headers or {})
    encoding = headers.get("Content-Encoding")
    if not isinstance(encoding, str) or encoding.lower() not in _GZIP:
        return {}
    if isinstance(case.body, NotSet):
        return {}
    if isinstance(case.body, bytes):
        body = case.body
    else:
        body = _lines(case.body) if case.media_type == NDJSON else json.dumps(case.body).encode()
    return {"data": gzip.compress(body)}


def _today(moment: object) -> object:
    """An RFC 3339 time moved to today's date (time and offset kept), else as it was."""
    if not isinstance(moment, str) or len(moment) < 10 or moment[4:5] != "-":
        return moment
    return dt.datetime.now(dt.UTC).date().isoformat() + moment[10:]


def _events_in_window(body: Any) -> Any:
    """occurredAt inside the server's window (INGEST_RETENTION_MS, INGEST_MAX_CLOCK_SKEW_MS),
    labels within their total size (LABELS_MAX_BYTES)."""
    events = body if isinstance(body, list) else [body]
    for event in events:
        if isinstance(event, dict) and "occurredAt" in event:
            event["occurredAt"] = _today(event["occurredAt"])
        labels = event.get("labels") if isinstance(event, dict) else None
        while isinstance(labels, dict) and len(canonical_labels(labels)) > LABELS_MAX_BYTES:
            labels.pop(next(iter(labels)))
    return body


def _range_in_rules(query: dict[str, Any]) -> dict[str, Any]:
    """from <= to (both explicit: the server's default `to` is its later clock), bucketMs with
    agg only and few enough buckets, a source for the aggregations the fleet refuses."""
    for name in ("from", "to"):
        if name in query:
            query[name] = _today(query[name])
    end = params.epoch_ms(query["to"], "to") if "to" in query else now_ms()
    start = params.epoch_ms(query["from"], "from") if "from" in query else end - DEFAULT_SPAN_MS
    start, end = min(start, end), max(start, end)
    query["from"], query["to"] = str(start), str(end)
    agg = query.get("agg")
    if agg is None:
        query.pop("bucketMs", None)
        return query
    if query.get("source") is None and agg in aggregates.NEEDS_SOURCE:
        query["source"] = "sensor-a"
    fitting = params.fitting_bucket(start, end, Settings(stream_shards=1).max_points)
    # The coverage phase sends some integers as strings.
    query["bucketMs"] = max(int(query.get("bucketMs") or 60_000), fitting)
    return query


def map_case(case: Case[Any]) -> Case[Any]:
    """A positive case brought inside the rules JSON Schema cannot state (see the docstring)."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    path = case.operation.path
    if path == EVENTS and case.body is not None:
        case.body = _events_in_window(case.body)
    elif path == RANGE and case.query is not None:
        case.query = _range_in_rules(case.query)
    return case


@pytest.fixture(scope="module")
def api_schema(redis_url: str) -> Iterator[BaseSchema]:
    """The app's own document, loaded from the app, which serves every case."""
    client = Redis.from_url(redis_url)
    client.flushall()
    client.close()
    app_settings = dataclasses.replace(
        Settings(stream_shards=1),
        redis_url=redis_url,
        max_clock_skew_ms=WINDOW_MS,
        retention_ms=WINDOW_MS,
    )
    app = build_app(app_settings)
    config = SchemathesisConfig.from_dict(CONFIG)
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app, config=config)
    checks = schema.config.checks_config_for()
    names = CHECKS.get_all_names()
    disabled = [name for name in names if not checks.get_by_name(name=name).enabled]
    assert not disabled, f"every check runs: {disabled} would not"

    @schema.hook("map_case")
    def _map_case(_: object, case: Case[Any]) -> Case[Any]:
        return map_case(case)

    started = time.monotonic()
    yield schema
    elapsed = time.monotonic() - started
    shutdown_lifespans()
    print(f"\nschemathesis: {sum(CASES.values())} cases in {elapsed:.1f} s")
    print(f"checks: {', '.join(CHECKS.get_all_names())}, max_response_time")
    for label, count in sorted(CASES.items()):
        print(f"  {count:5d}  {label}")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    # Schemathesis 4.32 names each operation's subtest through `node._nodeid`, which pytest
    # 9.2 no longer has.
    request.node._nodeid = request.node.nodeid


@pytest.mark.timeout(300)
@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_passes_every_check(case: Case[Any]) -> None:
    CASES[case.operation.label] += 1
    # No `checks=`: every check of this Schemathesis is enabled (asserted by the fixture), and
    # the default adds max_response_time.
    case.call_and_validate(**_gzip_body(case))


@pytest.mark.timeout(300)
def test_stateful_workflows_pass_every_check(api_schema: BaseSchema, redis_url: str) -> None:
    dead_letters = Settings(stream_shards=1).keys.dead_letter

    def reseed(_: object) -> None:
        # The same dead letters (same ids) before every scenario, for the list -> DELETE link
        # to pick from: hypothesis replays a scenario and needs it to draw from the same state.
        client = Redis.from_url(redis_url)
        try:
            client.delete(dead_letters)
            for n in range(20):
                entry = dead_letter_fields(b"1700000000000-0", "value: bad", None, "w1", now_ms())
                client.xadd(dead_letters, entry, id=f"1700000000000-{n + 1}")
        finally:
            client.close()

    def count(_: object, case: Case[Any]) -> None:
        CASES[f"stateful {case.operation.label}"] += 1

    def call_kwargs(_: object, case: Case[Any]) -> dict[str, Any]:
        return _gzip_body(case)

    workflow = api_schema.as_state_machine()
    methods = {"before_call": count, "get_call_kwargs": call_kwargs, "setup": reseed}
    counting = cast("type[APIStateMachine]", type("CountingWorkflow", (workflow,), methods))
    counting.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=8,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert any(label.startswith("stateful DELETE") for label in CASES), CASES
