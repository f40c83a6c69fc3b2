"""`make redis-cli`: the embedded Redis' own redis-cli runs from the project (with the library
path the server needs) and connects where `make run` puts Redis unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from ingest_devtools.localredis import embedded_available

if TYPE_CHECKING:
    from tests.conftest import LocalRedisFactory

pytestmark = pytest.mark.skipif(not embedded_available(), reason="no embedded Redis here")


def redis_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest_devtools.rediscli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_it_answers_on_the_port_it_is_given(local_redis_server: LocalRedisFactory) -> None:
    server = local_redis_server()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = redis_cli("-p", str(server.port), "SET", "greeting", "hello", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"


def test_it_connects_to_redis_url_by_default(local_redis_server: LocalRedisFactory) -> None:
    server = local_redis_server()
    env = {**os.environ, "REDIS_URL": server.url}
    assert redis_cli("RPUSH", "queue", "a", "b", env=env).stdout.strip() == "2"
    done = redis_cli("LRANGE", "queue", "0", "-1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a", "b"]
