"""The OpenAPI document says exactly what the API accepts, in the dialect clients read it in.

Every ``pattern`` anywhere in ``/schema/openapi.json`` is compiled by a JavaScript engine
(node's RegExp, with and without the ``u`` flag that ajv uses) and asked about good and bad
names; its verdicts must equal those of the product's own validation in Python. Dates carry
``format: date-time``, counts JSON Schema calls integers accept 482.0, and the NDJSON and gzip
variants of the ingest body are described.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pytest
from litestar.exceptions import HTTPException

from ingest_producer.app import create_app
from ingest_producer.jsonbody import ingest_headers
from ingest_producer.models import ProcessRequest
from ingest_producer.openapi import NDJSON, ecma_pattern, publishable
from ingest_producer.reading import catalog, params
from ingest_shared.keys import AGGREGATIONS
from ingest_shared.schema import EVENT_DECODER, LabelName, LabelValue, format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from litestar.types import Scope
    from redis.asyncio import Redis
    from tests.conftest import AppClient

NODE = shutil.which("node")
NO_NODE = "node (a JavaScript engine) is not installed; .ci/run installs Debian's nodejs"
# Reads {"patterns": [...], "cases": [[pattern index, text], ...]} on stdin; answers
# {"errors": {index: message}, "plain": [bool, ...], "unicode": [bool, ...]}.
VERDICTS_JS = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const errors = {};
const compile = (flags) => input.patterns.map((p, i) => {
  try { return new RegExp(p, flags); } catch (e) { errors[i + flags] = String(e); return null; }
});
const plain = compile(""), unicode = compile("u");
const test = (regexes) =>
  input.cases.map(([i, text]) => regexes[i] !== null && regexes[i].test(text));
process.stdout.write(JSON.stringify({errors, plain: test(plain), unicode: test(unicode)}));
"""
GOOD_NAMES = ["cpu", "a", "A", "Z", "AZ", "cpu.load_1-m", "m" * 128, "sensor-a", "x1", "job:r:5m"]
BAD_NAMES = [
    "",
    "cpu load",
    "cpu\n",
    "\ncpu",
    "a,kind=x",
    "x)",
    "{",
    "*",
    "é",
    "m" * 129,
    "cpu\u2028",
    "AcpuZ\n",
]
GOOD_SOURCES = ["sensor-a", "gw:1@site/rack_2.b-3", "s" * 128]
BAD_SOURCES = ["sensor a", "s\n", "s;x", "s" * 129, "ü"]
GOOD_IDS = ["0-0", "1700000000000-0", "9999999999999999999-9999999999999999999"]
BAD_IDS = ["", "1", "1-", "-1", "1-0\n", "1-0-0", "a-0", "99999999999999999999-0", " 1-0"]
GOOD_TIMES = ["0", "1700000000000", "9999999999999"]
BAD_TIMES = ["", "-1", "1e12", "17000000000000", "1700000000000.5", "now", "12\n"]
GOOD_KEYS = ["k", "retry-1", "a b", "~" * 256, "!#$%&'()*+,-./:;<=>?@[]^_`{|}"]
BAD_KEYS = ["", " a", "a ", "k" * 257, "tab\there", "é"]
GOOD_LABEL_NAMES = ["cpu", "kinds", "metric.x", "_x", "host.name", "a:b/c-d_1", "L" * 128]
BAD_LABEL_NAMES = [
    "",
    "kind",
    "source",
    "1cpu",
    "a b",
    "a=b",
    "a,b",
    "a(b",
    "é",
    "cpu\n",
    "L" * 129,
]
GOOD_LABEL_VALUES = ["x", "a b", "netgo,builtinassets (x)", "é€", "100%", "v" * 256]
BAD_LABEL_VALUES = ["", "a\nb", "tab\t", "\x7f", "v" * 257, "x\u0000"]
# /sources cursors: the hex of a device name (at most 128 bytes).
GOOD_CURSORS = ["00", "ab", "7365", "ff" * 128]
BAD_CURSORS = ["", "a", "abc", "AB", "zz", "0g", "ff" * 129, "ab\n", " ab"]
GOOD_ENCODINGS = ["gzip", "GZIP", "x-gzip", "X-Gzip", "identity", "Identity", ""]
BAD_ENCODINGS = ["br", "deflate", "gzip, br", "gzipx", "xgzip", "identit"]


def _accepts(check: Callable[[str], object]) -> Callable[[str], bool]:
    def verdict(text: str) -> bool:
        try:
            check(text)
        except (HTTPException, msgspec.ValidationError):
            return False
        return True

    return verdict


def _event_field(field: str) -> Callable[[str], object]:
    def decode(text: str) -> object:
        event = {"source": "s", "metric": "m", "value": 1, field: text}
        return EVENT_DECODER.decode(json.dumps(event).encode())

    return decode


def _header(name: str) -> Callable[[str], object]:
    def read(text: str) -> object:
        return ingest_headers(cast("Scope", {"headers": [(name.encode(), text.encode())]}))

    return read


def _consumer(text: str) -> object:
    return msgspec.convert({"consumer": text}, ProcessRequest)


# Where a pattern sits (the name of its property or parameter) -> the product's own check of
# that value, and the texts to ask both engines about.
RULES: dict[str, tuple[Callable[[str], bool], list[str]]] = {
    "metric": (_accepts(params.metric_name), GOOD_NAMES + BAD_NAMES),
    "source": (_accepts(params.source_name), GOOD_NAMES + BAD_NAMES + GOOD_SOURCES + BAD_SOURCES),
    "consumer": (_accepts(_consumer), GOOD_NAMES + BAD_NAMES + GOOD_SOURCES + BAD_SOURCES),
    "letter_id": (_accepts(params.stream_id), GOOD_IDS + BAD_IDS),
    "before": (_accepts(params.stream_id), GOOD_IDS + BAD_IDS),
    "after": (_accepts(params.stream_id), GOOD_IDS + BAD_IDS),
    "ids": (_accepts(params.stream_id), GOOD_IDS + BAD_IDS),
    "cursor": (_accepts(catalog.after_cursor), GOOD_CURSORS + BAD_CURSORS),
    # The other branch of `from`/`to` is an RFC 3339 time, not asked about here.
    "from": (_accepts(lambda t: params.epoch_ms(t, "from")), GOOD_TIMES + BAD_TIMES),
    "to": (_accepts(lambda t: params.epoch_ms(t, "to")), GOOD_TIMES + BAD_TIMES),
    "Idempotency-Key": (_accepts(_header("idempotency-key")), GOOD_KEYS + BAD_KEYS),
    "Content-Encoding": (
        _accepts(_header("content-encoding")),
        GOOD_ENCODINGS + BAD_ENCODINGS,
    ),
    "label": (
        _accepts(lambda t: params.label_filters([t])),
        [f"{n}={v}" for n in GOOD_LABEL_NAMES[:3] for v in GOOD_LABEL_VALUES]
        + [f"{n}=x" for n in BAD_LABEL_NAMES]
        + [f"cpu={v}" for v in BAD_LABEL_VALUES]
        + ["cpu", "=x", "kind=x", "metric=cpu", "kinds=x", "cpu=a=b"],
    ),
    # An event's label set: its names (propertyNames) and values (additionalProperties).
    "labels.name": (
        _accepts(lambda t: msgspec.convert(t, LabelName)),
        GOOD_LABEL_NAMES + BAD_LABEL_NAMES,
    ),
    "labels.value": (
        _accepts(lambda t: msgspec.convert(t, LabelValue)),
        GOOD_LABEL_VALUES + BAD_LABEL_VALUES,
    ),
}
# The event body's names are also checked through the ingest decoder itself.
BODY_RULES = {
    "metric": _accepts(_event_field("metric")),
    "source": _accepts(_event_field("source")),
}


def _fuzz(alphabet: str, count: int, seed: int) -> list[str]:
    """Short strings over ``alphabet``: the corners the lists above may have missed."""
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(count)]


FUZZ = _fuzz("aZ09_.-:@/ ,\n\t\r\u2028é$^()[]\\AZz-", 300, seed=9)


@dataclasses.dataclass(frozen=True)
class Found:
    """One ``pattern`` of the document, with the schema object around it."""

    where: str  # JSON pointer
    name: str  # the property or parameter it constrains
    schema: dict[str, Any]


# The schemas of an object's keys and of its values (a map such as an event's labels).
_MAP_PARTS = {"propertyNames": "name", "additionalProperties": "value"}


def find_patterns(node: Any, where: str = "", name: str = "") -> Iterator[Found]:
    """Every schema object with a ``pattern``, named by the property/parameter it belongs to."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from find_patterns(item, f"{where}/{index}", name)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("pattern"), str):
        yield Found(where, name, node)
    if isinstance(node.get("name"), str) and "in" in node:  # a parameter object
        name = node["name"]
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            for prop, sub in value.items():
                yield from find_patterns(sub, f"{where}/properties/{prop}", prop)
        elif key in _MAP_PARTS and isinstance(value, dict):
            yield from find_patterns(value, f"{where}/{key}", f"{name}.{_MAP_PARTS[key]}")
        else:
            yield from find_patterns(value, f"{where}/{key}", name)


def _length_ok(schema: dict[str, Any], text: str) -> bool:
    low: int = schema.get("minLength", 0)
    high: int = schema.get("maxLength", len(text))
    return low <= len(text) <= high


@pytest.fixture
async def document(redis: Redis, redis_url: str, serve: AppClient) -> dict[str, Any]:
    app = create_app(dataclasses.replace(Settings(stream_shards=1), redis_url=redis_url), redis)
    async with serve(app) as http:
        response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def run_node(patterns: list[str], cases: list[tuple[int, str]]) -> dict[str, Any]:
    if NODE is None:
        pytest.skip(NO_NODE)
    payload = json.dumps({"patterns": patterns, "cases": cases})
    done = subprocess.run(
        [NODE, "-e", VERDICTS_JS],
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def test_every_pattern_means_in_javascript_what_the_api_enforces(
    document: dict[str, Any],
) -> None:
    found = list(find_patterns(document))
    assert {f.name for f in found} == set(RULES), "a pattern without a rule to check it against"
    patterns = [f.schema["pattern"] for f in found]
    cases: list[tuple[int, str]] = []
    expected: list[bool] = []
    for index, item in enumerate(found):
        check, texts = RULES[item.name]
        body_check = BODY_RULES.get(item.name) if "/requestBody/" in item.where else None
        for text in [*texts, *FUZZ]:
            verdict = check(text)
            if body_check is not None:
                assert body_check(text) == verdict, (item.where, text)
            cases.append((index, text))
            expected.append(verdict)

    answer = run_node(patterns, cases)

    assert answer["errors"] == {}, "patterns ECMA-262 cannot compile"
    for engine in ("plain", "unicode"):
        javascript = [
            matched and _length_ok(found[index].schema, text)
            for (index, text), matched in zip(cases, answer[engine], strict=True)
        ]
        disagree = [
            (found[index].where, text, python)
            for (index, text), python, js in zip(cases, expected, javascript, strict=True)
            if python != js
        ]
        assert disagree == [], f"node ({engine}) and the API disagree"
    assert any(expected)
    assert not all(expected)


async def test_no_pattern_is_published_in_python_syntax(document: dict[str, Any]) -> None:
    for item in find_patterns(document):
        pattern = item.schema["pattern"]
        assert pattern.startswith("^"), item.where
        assert pattern.endswith("$"), item.where
        assert "\\A" not in pattern, item.where
        assert "\\Z" not in pattern, item.where


def test_python_anchors_become_ecma_anchors_and_other_python_syntax_is_refused() -> None:
    assert ecma_pattern(r"\A[a-z]+\Z") == "^[a-z]+$"
    assert ecma_pattern("^[a-z]+$") == "^[a-z]+$"
    for python_only in (r"\A(?P<x>a)\Z", r"\A(?i)a\Z", r"a\Zb", r"\A(?#c)a\Z"):
        with pytest.raises(ValueError, match="Python-only"):
            ecma_pattern(python_only)
    assert publishable({"type": "number", "multipleOf": 1, "minimum": 1}) == {
        "type": "integer",
        "minimum": 1,
    }
    # A property named "pattern" is a schema, not a regex.
    schema = {"properties": {"pattern": {"type": "string", "pattern": r"\Ax\Z"}}}
    assert publishable(schema) == {"properties": {"pattern": {"type": "string", "pattern": "^x$"}}}


async def test_times_are_documented_as_date_time(document: dict[str, Any]) -> None:
    paths = document["paths"]
    body = paths["/api/ingest/events"]["post"]["requestBody"]["content"]
    single = body["application/json"]["schema"]["oneOf"][0]
    assert {"type": "string", "format": "date-time"} in single["properties"]["occurredAt"]["anyOf"]
    assert body[NDJSON]["schema"]["items"] == single
    components = document["components"]["schemas"]
    assert components["EventOut"]["properties"]["occurredAt"]["format"] == "date-time"
    assert components["DeadLetter"]["properties"]["failedAt"]["format"] == "date-time"
    time_params = [
        p
        for p in paths["/api/ingest/metrics/{metric}/range"]["get"]["parameters"]
        if p["name"] in ("from", "to")
    ]
    for parameter in time_params:
        assert {"type": "string", "format": "date-time"} in parameter["schema"]["oneOf"]


async def test_counts_are_integers_and_integral_numbers_are_accepted(
    document: dict[str, Any], redis: Redis, redis_url: str, serve: AppClient
) -> None:
    paths = document["paths"]
    process = paths["/api/ingest/workers/process"]["post"]["requestBody"]["content"]
    count = process["application/json"]["schema"]["properties"]["count"]
    assert count == {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}
    replay = paths["/api/ingest/dead-letters/replay"]["post"]["requestBody"]["content"]
    assert replay["application/json"]["schema"]["properties"]["max"]["type"] == "integer"
    app = create_app(dataclasses.replace(Settings(stream_shards=1), redis_url=redis_url), redis)
    event = {"source": "s", "metric": "m", "value": 1, "occurredAt": format_ms(now_ms())}

    async with serve(app) as http:
        assert (await http.post("/api/ingest/events", json=event)).status_code == 200
        whole = await http.post(
            "/api/ingest/workers/process", json={"consumer": "w1", "count": 482.0}
        )
        fraction = await http.post(
            "/api/ingest/workers/process", json={"consumer": "w1", "count": 482.5}
        )
        replayed = await http.post(
            "/api/ingest/dead-letters/replay", json={"all": True, "max": 5.0}
        )
        recent = await http.get("/api/ingest/events/recent", params={"count": "1.0"})

    assert (whole.status_code, whole.json()["processed"]) == (200, 1)
    assert fraction.status_code == 422
    assert fraction.json()["errors"] == [
        {"field": "count", "message": "must be an integer from 1 to 10000"}
    ]
    assert replayed.status_code == 200
    assert (recent.status_code, len(recent.json())) == (200, 1)


async def test_the_ingest_body_documents_json_ndjson_and_gzip(document: dict[str, Any]) -> None:
    operation = document["paths"]["/api/ingest/events"]["post"]
    content = operation["requestBody"]["content"]
    batch = content["application/json"]["schema"]["oneOf"][1]
    assert content[NDJSON]["schema"]["type"] == "array"
    assert content[NDJSON]["schema"]["maxItems"] == batch["maxItems"]
    assert "gzip" in operation["requestBody"]["description"]
    encoding = next(p for p in operation["parameters"] if p["name"] == "Content-Encoding")
    assert "compressed" in encoding["description"]
    assert encoding["schema"]["pattern"]  # checked against the server by the node test


async def test_read_parameters_document_their_choices(document: dict[str, Any]) -> None:
    parameters = {
        p["name"]: p["schema"]
        for p in document["paths"]["/api/ingest/metrics/{metric}/range"]["get"]["parameters"]
    }
    assert parameters["agg"]["enum"] == list(AGGREGATIONS)
    assert parameters["bucketMs"]["maximum"] == params.MAX_EPOCH_MS
    replay = document["paths"]["/api/ingest/dead-letters/replay"]["post"]["requestBody"]
    assert len(replay["content"]["application/json"]["schema"]["oneOf"]) == 2
