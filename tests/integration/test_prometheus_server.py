"""Prometheus itself against the service: a real server (Debian's ``prometheus`` package)
scrapes the producer, the worker and itself and remote-writes everything to the producer;
``promtool`` lints both services' ``/metrics`` and unit-tests the alert rules of docs/operating.md.

Without the package these tests are skipped with the reason (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from tests.faults.harness import Services
from tests.harness.prometheus_server import PrometheusServer, Series, binary, promtool

from ingest_shared.keys import RESERVED_LABELS
from ingest_shared.schema import EXPORTED_PREFIX

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

RULES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "operating.md"
API_KEY = "prometheus-remote-write-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Every series of the `prometheus` job carries this target label: commas, "=", parentheses,
# quotes and spaces, the characters a TimeSeries FILTER or a naive label parser trips on.
AWKWARD_LABEL = {"rack": 'east, row=2 (b) "q"'}
# Of Prometheus' own ~300 series, a few kinds: an info metric with "/" and "+" in its label
# values, a counter by handler and code, a summary with quantiles.
PROMETHEUS_KEEP = "prometheus_build_info|prometheus_http_requests_total|go_gc_duration_seconds"
SCRAPES = 5  # of each target before the comparison
STORED_TIMEOUT_S = 15.0


@pytest.fixture
async def services(redis: Redis, redis_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    """``ingest-producer`` and ``ingest-worker`` processes, keys on, ready."""
    stack = Services(redis_url, tmp_path, env={"INGEST_API_KEYS": API_KEY})
    async with stack.serving("ingest-producer", "ingest-worker"):
        await stack.ready()
        yield stack


async def test_promtool_finds_no_problem_in_the_producer_and_the_worker_metrics(
    services: Services,
) -> None:
    """``promtool check metrics`` (its parser and linter: names, suffixes, units, HELP) on
    what each service serves, after some traffic so the labelled families have samples."""
    binary("promtool")
    async with httpx.AsyncClient(base_url=services.base_url, headers=AUTH, timeout=10) as http:
        event = {"source": "dev-1", "metric": "temp", "value": 21.5}
        assert (await http.post("/api/ingest/events", json=[event])).status_code == 200
        assert (await http.post("/api/ingest/events", json=[{"metric": ""}])).status_code == 422
        assert (await http.get("/api/ingest/metrics/temp/range")).status_code == 200
        assert (await http.get("/no/such/route")).status_code == 404
        producer = await http.get("/metrics")
        worker = await http.get(f"http://127.0.0.1:{services.worker_port}/metrics")
    for name, response in (("producer", producer), ("worker", worker)):
        assert response.status_code == 200, (name, response.text)
        assert f"ingest_{name}_" in response.text, name
        output = await asyncio.to_thread(promtool, "check", "metrics", stdin=response.text)
        assert output == "", f"promtool check metrics on the {name}'s /metrics:\n{output}"


def documented_alert_rules() -> str:
    """The YAML block of docs/operating.md that holds the alert rules, as written there."""
    text = RULES_PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```$", text, re.M | re.S)
    found = [block for block in blocks if "IngestLagGrowing" in block]
    assert len(found) == 1, f"{len(found)} YAML blocks of {RULES_PAGE.name} hold IngestLagGrowing"
    return str(found[0])


# One promtool unit-test group per documented alert: input series as the services export them
# (one sample a minute) and, at each time, the alerts expected (none: it must not fire).
PRODUCER = {"job": "producer", "instance": "producer-1:8080"}
WORKER = {"job": "worker", "instance": "worker-1:9100"}
ALERT_CASES: dict[str, list[dict[str, Any]]] = {
    "IngestLagGrowing": [
        {
            "interval": "1m",
            # +1000 a minute: over 10,000 from minute 11, so firing from minute 16 (for: 5m).
            "input_series": [{"series": "ingest_queue_backlog{%s}", "values": "0+1000x30"}],
            "labels": PRODUCER,
            "alerts": {
                "10m": [],
                "14m": [],
                "20m": [
                    {
                        "exp_labels": PRODUCER,
                        "exp_annotations": {
                            "summary": "Workers fall behind: backlog 20000 and growing for "
                            "5 min; add workers"
                        },
                    }
                ],
            },
        },
        {
            "interval": "1m",
            # Large but draining, then large and flat: not growing.
            "input_series": [
                {"series": "ingest_queue_backlog{%s}", "values": "50000-1000x20 30000x20"}
            ],
            "labels": PRODUCER,
            "alerts": {"15m": [], "35m": []},
        },
    ],
    "IngestDeadLettersRising": [
        {
            "interval": "1m",
            # One dead letter at minute 11, then nothing: firing for 15 minutes, then not.
            "input_series": [
                {
                    "series": 'ingest_worker_dead_lettered_total{reason="invalid",%s}',
                    "values": "0x10 1x40",
                }
            ],
            "labels": WORKER,
            "alerts": {
                "5m": [],
                "20m": [
                    {
                        "exp_labels": {"reason": "invalid", **WORKER},
                        "exp_annotations": {
                            "summary": "Events dead-lettered (invalid); see "
                            "/api/ingest/dead-letters"
                        },
                    }
                ],
                "45m": [],
            },
        }
    ],
    "IngestWorkerNoProgress": [
        {
            "interval": "1m",
            # Progress every minute (the value is the time of the sample) until minute 5, then
            # none: more than 60 s without progress from minute 7.
            "input_series": [
                {
                    "series": "ingest_worker_last_progress_timestamp_seconds{%s}",
                    "values": "0+60x5 300x10",
                }
            ],
            "labels": WORKER,
            "alerts": {
                "4m": [],
                "6m": [],
                "10m": [
                    {
                        "exp_labels": WORKER,
                        "exp_annotations": {
                            "summary": "Worker worker-1:9100 made no progress for a minute"
                        },
                    }
                ],
            },
        }
    ],
}


def promtool_tests(alert: str) -> dict[str, Any]:
    """The promtool unit-test file for ``alert``'s cases."""
    tests = []
    for case in ALERT_CASES[alert]:
        selector = ",".join(f'{name}="{value}"' for name, value in case["labels"].items())
        tests.append(
            {
                "interval": case["interval"],
                "input_series": [
                    {"series": series["series"] % selector, "values": series["values"]}
                    for series in case["input_series"]
                ],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert, "exp_alerts": expected}
                    for at, expected in case["alerts"].items()
                ],
            }
        )
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}


def test_the_documented_alert_rules_are_valid_and_cover_what_the_tests_exercise(
    tmp_path: Path,
) -> None:
    """The documented block parses as YAML, ``promtool check rules`` accepts it (expressions,
    templates, no duplicates), and it holds exactly the alerts the cases below cover."""
    rules = documented_alert_rules()
    (tmp_path / "rules.yml").write_text(rules)
    output = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS: 3 rules found" in output, output
    alerts = [rule["alert"] for group in yaml.safe_load(rules)["groups"] for rule in group["rules"]]
    assert sorted(alerts) == sorted(ALERT_CASES)


@pytest.mark.parametrize(
    "alert",
    [
        "IngestLagGrowing",
        "IngestDeadLettersRising",
        "IngestWorkerNoProgress",
    ],
)
def test_each_documented_alert_fires_when_it_should_and_not_otherwise(
    alert: str, tmp_path: Path
) -> None:
    """``promtool test rules`` on the documented block, with the labels and annotation text
    each firing alert must have, and times at which it must not fire."""
    (tmp_path / "rules.yml").write_text(documented_alert_rules())
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(promtool_tests(alert), sort_keys=False))
    output = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert "SUCCESS" in output, output


def prometheus_config(services: Services, itself_at: str) -> dict[str, Any]:
    """Scrape every second: the producer, the worker and Prometheus itself at ``itself_at``
    (a few of its series, with an awkward target label); remote-write to the producer with a
    key."""

    def job(name: str, target: str, **extra: Any) -> dict[str, Any]:
        return {"job_name": name, "static_configs": [{"targets": [target]}], **extra}

    itself = job(
        "prometheus",
        itself_at,
        metric_relabel_configs=[
            {"source_labels": ["__name__"], "regex": PROMETHEUS_KEEP, "action": "keep"}
        ],
    )
    itself["static_configs"][0]["labels"] = AWKWARD_LABEL
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            job("producer", f"127.0.0.1:{services.port}"),
            job("worker", f"127.0.0.1:{services.worker_port}"),
            itself,
        ],
        "remote_write": [
            {
                "url": f"{services.base_url}/api/v1/write",
                "authorization": {"credentials": API_KEY},
                "queue_config": {
                    "batch_send_deadline": "1s",
                    "min_backoff": "50ms",
                    "max_backoff": "1s",
                },
                # Metadata goes in requests of its own (no samples): send some too.
                "metadata_config": {"send_interval": "2s"},
            }
        ],
    }


SampleKey = tuple[int, float, frozenset[tuple[str, str]]]


def expected_by_series(reference: list[Series]) -> dict[tuple[str, str], set[SampleKey]]:
    """Prometheus' samples by (metric, instance): what the range API must return for them.
    Every label but ``__name__`` (the metric) and ``instance`` (the source) is an event label;
    one named like a label the service sets (the producer's own ``kind``) is renamed
    ``exported_<name>``, as Prometheus renames a clashing label."""
    expected: dict[tuple[str, str], set[SampleKey]] = {}
    for labels, samples in reference:
        rest = {
            (EXPORTED_PREFIX + k if k in RESERVED_LABELS else k): v
            for k, v in labels.items()
            if k not in ("__name__", "instance")
        }
        frozen = frozenset(rest.items())
        points = expected.setdefault((labels["__name__"], labels["instance"]), set())
        points.update((at, value, frozen) for at, value in samples)
    return expected


async def stored(
    http: httpx.AsyncClient, metric: str, source: str, start: int, end: int
) -> set[SampleKey]:
    response = await http.get(
        f"/api/ingest/metrics/{metric}/range",
        params={"source": source, "from": start, "to": end},
    )
    assert response.status_code == 200, (metric, source, response.text)
    return {
        (p["timestampMs"], float(p["value"]), frozenset((p.get("labels") or {}).items()))
        for p in response.json()["points"]
    }


async def differences(
    http: httpx.AsyncClient, expected: dict[tuple[str, str], set[SampleKey]]
) -> list[str]:
    """What the range API answers that differs from ``expected``, series by series."""
    found = []
    for (metric, source), points in sorted(expected.items()):
        start, end = min(p[0] for p in points), max(p[0] for p in points)
        got = await stored(http, metric, source, start, end)
        missing, extra = sorted(points - got), sorted(got - points)
        if missing or extra:
            found.append(f"{metric} {source}: missing {missing[:3]}, unexpected {extra[:3]}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_every_sample_prometheus_remote_writes_is_readable_with_its_labels(
    services: Services, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the producer, the worker and itself every second for a few
    seconds and remote-writes (snappy + protobuf, bearer key) to ``/api/v1/write``. Then
    every sample in its TSDB must come back from the range API, with its labels.

    The reference is Prometheus' whole TSDB, taken when nothing more can enter it: a reload
    with no scrape jobs stops every scrape loop before ``/-/reload`` returns (their stale
    markers, NaN, are neither returned by queries nor stored by us). From then on the TSDB is
    fixed and the remote-write queue (kept: its config is unchanged) sends what is left,
    so the range API must converge to exactly the TSDB's samples; it is polled until it
    does, or the time runs out. Prometheus' own counters must show no failed or dropped
    samples or metadata, the TSDB must be the same after the comparison, and SIGTERM must
    stop it cleanly (exit 0).
    """
    binary("prometheus")
    prometheus = PrometheusServer(tmp_path / "prometheus")
    prometheus.config = prometheus_config(services, prometheus.address)
    async with prometheus:
        await prometheus.scraped(jobs=3, times=SCRAPES)
        await prometheus.reload(
            {k: v for k, v in prometheus.config.items() if k != "scrape_configs"}
        )
        reference = await prometheus.query('{__name__=~".+"}[10m]')
        expected = expected_by_series(reference)

        instances = {labels["job"]: labels["instance"] for labels, _ in reference}
        assert instances == {
            "producer": f"127.0.0.1:{services.port}",
            "worker": f"127.0.0.1:{services.worker_port}",
            "prometheus": prometheus.address,
        }
        ups = {labels["job"]: s for labels, s in reference if labels["__name__"] == "up"}
        assert {job: {v for _, v in s} for job, s in ups.items()} == {j: {1.0} for j in instances}
        assert min(len(s) for s in ups.values()) >= SCRAPES, ups
        names = {metric for metric, _ in expected}
        assert {
            "ingest_producer_requests_total",
            "ingest_worker_acked_total",
            "prometheus_build_info",
            "go_gc_duration_seconds",
        } <= names

        async with httpx.AsyncClient(base_url=services.base_url, headers=AUTH, timeout=10) as http:
            deadline = time.monotonic() + STORED_TIMEOUT_S
            while True:  # the worker may still be storing what came last
                diff = await differences(http, expected)
                if not diff or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        assert not diff, f"{len(diff)} of {len(expected)} series differ:\n" + "\n".join(diff[:20])

        own = await prometheus.own_metrics()
        for counter in (
            "prometheus_remote_storage_samples_failed_total",
            "prometheus_remote_storage_samples_dropped_total",
            "prometheus_remote_storage_metadata_failed_total",
        ):
            assert own.get(counter) == 0, (counter, own.get(counter), prometheus.log[-3000:])
        assert own.get("prometheus_remote_storage_metadata_total", 0) > 0
        assert await prometheus.query('{__name__=~".+"}[10m]') == reference

        assert await asyncio.to_thread(prometheus.stop) == 0, prometheus.log[-3000:]
    services.alive()
