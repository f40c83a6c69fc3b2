"""The agent protocol settings and credential forms: parsed once, refused with a reason."""

from __future__ import annotations

import base64

import pytest

from ingest_producer.auth import agent_key, presented_key
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.settings import Settings, load_settings


def test_the_protocol_settings_default_to_what_the_agents_send() -> None:
    settings = load_settings({})

    assert settings.influx_source_tags == ("host", "device_id", "entity_id", "source")
    assert settings.influx_default_source is None
    assert settings.prometheus_source_label == "instance"
    assert settings.otlp_source_attributes == ("host.name", "service.instance.id", "device.id")
    assert settings.protocol_max_bytes == 32 * 1024 * 1024 == Settings().protocol_max_bytes


def test_the_protocol_settings_are_read_from_the_environment() -> None:
    settings = load_settings(
        {
            "INGEST_INFLUX_SOURCE_TAGS": " sensor , host ",
            "INGEST_INFLUX_DEFAULT_SOURCE": "gateway-1",
            "INGEST_PROMETHEUS_SOURCE_LABEL": "job",
            "INGEST_OTLP_SOURCE_ATTRIBUTES": "device.id",
            "INGEST_PROTOCOL_MAX_BYTES": "20_971_520",
        }
    )

    assert settings.influx_source_tags == ("sensor", "host")
    assert settings.influx_default_source == "gateway-1"
    assert settings.prometheus_source_label == "job"
    assert settings.otlp_source_attributes == ("device.id",)
    assert settings.protocol_max_bytes == 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_INFLUX_SOURCE_TAGS", "host,,device_id"),
        ("INGEST_INFLUX_SOURCE_TAGS", "host,host"),
        ("INGEST_INFLUX_SOURCE_TAGS", "a b"),
        ("INGEST_OTLP_SOURCE_ATTRIBUTES", ",".join(f"a{i}" for i in range(17))),
        ("INGEST_INFLUX_DEFAULT_SOURCE", "no spaces allowed"),
        ("INGEST_PROMETHEUS_SOURCE_LABEL", "1st"),
        ("INGEST_PROTOCOL_MAX_BYTES", "1000"),
        ("INGEST_PROTOCOL_MAX_BYTES", "lots"),
    ],
)
def test_bad_protocol_settings_stop_the_process_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_settings({name: value})


def _basic(credentials: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "query", "key"),
    [
        ({"authorization": "Token k1"}, None, "k1"),
        ({"authorization": "token  k1 "}, None, "k1"),
        ({"authorization": "Bearer k2"}, None, "k2"),
        ({"x-api-key": "k3"}, None, "k3"),
        (_basic("user:k4"), None, "k4"),
        (_basic("k5:"), None, "k5"),
        (_basic("k6"), None, "k6"),
        (_basic(":"), None, None),
        ({"authorization": "Basic %%%"}, None, None),
        ({"authorization": "Token "}, None, None),
        ({}, {"u": "user", "p": "k7"}, "k7"),
        ({}, {"u": "k8", "p": ""}, "k8"),
        ({}, {"u": "user", "p": "k9"}, "k9"),
        ({"authorization": "Token k10"}, {"p": "other"}, "k10"),
        ({}, {}, None),
        ({}, None, None),
    ],
)
def test_agent_key_reads_every_form_an_agent_sends(
    headers: dict[str, str], query: dict[str, str] | None, key: str | None
) -> None:
    assert agent_key(headers, query) == key


def test_the_json_routes_key_forms_are_unchanged() -> None:
    assert presented_key({"authorization": "Token k1"}) is None
    assert presented_key(_basic("user:k1")) is None
    assert presented_key({"authorization": "Bearer k1"}) == "k1"
    assert presented_key({"x-api-key": "k1"}) == "k1"
