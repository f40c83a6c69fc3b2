"""The Kubernetes example and compose file: valid, and pointing at what the services serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ingest_shared.acl import DEFAULT_USERS, Role, acl_file_line, setuser_command
from ingest_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
# A Kubernetes version whose schemas kubernetes-validate ships.
K8S_VERSION = "1.30.0"


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if not d["apiVersion"].startswith("keda.sh/")],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_core_resources_validate_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_producer_probes_ready_and_health_on_its_port() -> None:
    producer = container(by_kind("Deployment", "ingest-producer"))
    env = {e["name"]: e.get("value") for e in producer["env"]}
    assert env["INGEST_HTTP_HOST"] == "0.0.0.0"
    [port] = producer["ports"]
    assert str(port["containerPort"]) == env["INGEST_HTTP_PORT"]
    assert producer["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert producer["livenessProbe"]["httpGet"]["path"] == "/health"


def test_worker_liveness_is_its_health_endpoint_on_the_default_port() -> None:
    worker = container(by_kind("Deployment", "ingest-worker"))
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["INGEST_WORKER_HTTP_HOST"] == "0.0.0.0"
    assert int(env["INGEST_WORKER_HTTP_PORT"]) == Settings().worker_http_port
    [port] = worker["ports"]
    assert port["containerPort"] == Settings().worker_http_port
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}


def test_keda_scales_the_worker_deployment_on_the_groups_lag() -> None:
    scaled = by_kind("ScaledObject", "ingest-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ingest-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1
    # A shard has one worker at a time: more replicas than shards would only stand by.
    shards = Settings().keys.shards
    assert scaled["spec"]["maxReplicaCount"] == len(shards)
    triggers = scaled["spec"]["triggers"]
    # One trigger per shard stream of the default layout, each on the group's lag.
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(s.stream for s in shards)
    worker_env = {e["name"] for e in container(by_kind("Deployment", "ingest-worker"))["env"]}
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == Settings().consumer_group
        assert int(meta["lagCount"]) > 0
        assert meta["addressFromEnv"] in worker_env


def test_compose_restarts_services_and_checks_the_workers_health_endpoint() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {s.get("restart") for s in services.values()} == {"unless-stopped"}
    worker = services["worker"]
    assert "ports" not in worker  # scaled workers would collide on a published port
    assert "/health" in " ".join(worker["healthcheck"]["test"])
    assert worker["environment"]["INGEST_WORKER_HTTP_HOST"] == "0.0.0.0"


def test_compose_acl_file_is_what_the_acl_module_makes_and_compose_uses_it() -> None:
    expected = ["user default off"] + [
        acl_file_line(role, f"change-me-{role.value}", Settings().key_prefix) for role in Role
    ]
    assert (ROOT / "deploy" / "redis" / "users.acl").read_text().splitlines() == expected
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert "/etc/redis/users.acl" in services["redis"]["command"]
    for name, role in (("producer", Role.PRODUCER), ("worker", Role.WORKER)):
        url = services[name]["environment"]["REDIS_URL"]
        assert url.startswith(f"redis://{DEFAULT_USERS[role]}:change-me-{role.value}@"), url


def test_the_documented_acl_lines_are_what_the_acl_module_makes() -> None:
    page = (ROOT / "docs" / "reliability-and-security.md").read_text()
    for role in Role:
        line = setuser_command(role, f"{role.value.upper()}_PASSWORD", Settings().key_prefix)
        assert line in page, role


def test_cluster_compose_runs_the_services_in_cluster_mode_under_their_users() -> None:
    compose = yaml.safe_load((ROOT / "compose.cluster.yaml").read_text())
    services = compose["services"]
    nodes = [name for name in services if name.startswith("redis-")]
    assert len(nodes) == 3
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-announce-hostname") + 1] == name
        assert "/etc/redis/users.acl" in command
        assert any("cluster-users.acl" in volume for volume in services[name]["volumes"])
    init = " ".join(services["cluster-init"]["command"])
    assert all(f"getent hosts {name}" in init for name in nodes)
    for name, role in (("producer", Role.PRODUCER), ("worker", Role.WORKER)):
        env = services[name]["environment"]
        assert env["INGEST_REDIS_MODE"] == "cluster"
        assert int(env["INGEST_STREAM_SHARDS"]) % len(nodes) == 0  # spread evenly
        assert env["REDIS_URL"].startswith(f"redis://{DEFAULT_USERS[role]}:change-me-{role.value}@")
        assert services[name]["depends_on"]["cluster-init"] == {
            "condition": "service_completed_successfully"
        }
    # The service users are exactly the single-node file's; only cluster-init's admin is added.
    single = (ROOT / "deploy" / "redis" / "users.acl").read_text().splitlines()
    cluster = (ROOT / "deploy" / "redis" / "cluster-users.acl").read_text().splitlines()
    assert cluster[: len(single)] == single
    assert [line.split()[1] for line in cluster[len(single) :]] == ["ingest-admin"]
