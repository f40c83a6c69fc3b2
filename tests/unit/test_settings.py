"""Settings: defaults are the tutorial's, and a bad value names its variable."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ingest_shared.exceptions import ConfigurationError
from ingest_shared.settings import auto_http_workers, load_settings, usable_cpus

if TYPE_CHECKING:
    from pathlib import Path


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


@pytest.mark.parametrize(
    ("raw", "expected"), [("1000/s", (1000, 1000)), ("50/10s", (50, 10_000)), ("6/m", (6, 60_000))]
)
def test_rate_limit_forms(raw: str, expected: tuple[int, int]) -> None:
    settings = load_settings({"INGEST_RATE_LIMIT": raw})
    assert (settings.rate_limit, settings.rate_window_ms) == expected


@pytest.mark.parametrize("raw", ["fast", "0/s", "10/0s", "10/day"])
def test_bad_rate_limit_is_named(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="INGEST_RATE_LIMIT"):
        load_settings({"INGEST_RATE_LIMIT": raw})


def test_durability_modes() -> None:
    assert load_settings({}).durability == "none"
    assert load_settings({"INGEST_DURABILITY": "AOF"}).durability == "aof"
    replicas = load_settings({"INGEST_DURABILITY": "replicas:2"})
    assert (replicas.durability, replicas.durability_replicas) == ("replicas", 2)
    with pytest.raises(ConfigurationError, match="INGEST_DURABILITY"):
        load_settings({"INGEST_DURABILITY": "replicas:0"})


def test_api_keys_from_env_and_file_never_show_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "keys"
    secret_file.write_text("# device keys\nfile-key-0123456789abcdef\n\n")
    settings = load_settings(
        {"INGEST_API_KEYS": "env-key-0123456789abcdef", "INGEST_API_KEYS_FILE": str(secret_file)}
    )
    assert settings.write_keys == {"env-key-0123456789abcdef", "file-key-0123456789abcdef"}
    assert "0123456789abcdef" not in repr(settings)


def test_short_or_unreadable_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="INGEST_READ_KEYS"):
        load_settings({"INGEST_READ_KEYS": "short"})
    with pytest.raises(ConfigurationError, match="INGEST_API_KEYS_FILE"):
        load_settings({"INGEST_API_KEYS_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (512, 64)])
def test_auto_http_workers_is_half_the_cpus(cpus: int, expected: int) -> None:
    assert auto_http_workers(cpus) == expected


def test_http_workers_auto_by_default_or_a_count() -> None:
    expected = auto_http_workers(usable_cpus())
    assert load_settings({}).http_workers == expected
    assert load_settings({"INGEST_HTTP_WORKERS": "AUTO"}).http_workers == expected
    assert load_settings({"INGEST_HTTP_WORKERS": "3"}).http_workers == 3
    for bad in ("0", "65", "many"):
        with pytest.raises(ConfigurationError, match=r"INGEST_HTTP_WORKERS.*auto or a number"):
            load_settings({"INGEST_HTTP_WORKERS": bad})
