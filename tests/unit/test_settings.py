"""Settings: defaults are the tutorial's, and a bad value names its variable."""

from __future__ import annotations

import pytest

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.settings import load_settings


def test_defaults_are_the_tutorials() -> None:
    settings = load_settings({})
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.stream_key == "telemetry:events"
    assert settings.dead_letter_key == "telemetry:events:dead-letter"
    assert settings.consumer_group == "telemetry-workers"
    assert settings.metrics_key == "telemetry:metrics"
    assert settings.rollup_bucket_ms == 60_000
    assert (settings.batch_size, settings.block_ms, settings.max_deliveries) == (500, 2000, 5)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis://cache:6380/2",
            "INGEST_BATCH_SIZE": "1_000",
            "INGEST_CONSUMER_NAME": "worker-7",
            "INGEST_LOG_LEVEL": "DEBUG",
            "INGEST_SHUTDOWN_GRACE_S": "2.5",
        }
    )
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.batch_size == 1000
    assert settings.consumer_name == "worker-7"
    assert settings.log_level == "debug"
    assert settings.shutdown_grace_s == 2.5


def test_default_consumer_name_is_host_and_pid() -> None:
    import os

    assert load_settings({}).consumer_name.endswith(f"-{os.getpid()}")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_BATCH_SIZE", "abc"),
        ("INGEST_BATCH_SIZE", "0"),
        ("INGEST_BLOCK_MS", "-5"),
        ("INGEST_HTTP_PORT", "70000"),
        ("REDIS_URL", "http://localhost"),
        ("INGEST_STREAM_KEY", "has space"),
        ("INGEST_CONSUMER_NAME", "bad\nname"),
        ("INGEST_LOG_LEVEL", "loud"),
        ("INGEST_SHUTDOWN_GRACE_S", "nan"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_settings({name: value})


def test_blank_values_mean_default() -> None:
    assert load_settings({"INGEST_BATCH_SIZE": "  "}).batch_size == 500
