"""`make run`'s supervisor as a process: it reads .env, prints its banner only once the stack
is up, and stops at once, in one line, on a Redis that does not answer or a bad setting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from redis.asyncio import Redis

pytestmark = pytest.mark.slow

BANNER = "telemetry-ingest: API"
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 25.0


def clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    return base | extra


@contextlib.contextmanager
def supervisor(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m ingest_devtools.supervisor``, stdout and stderr in one file, in order."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest_devtools.supervisor", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_banner(process: subprocess.Popen[bytes], log: Path) -> list[str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        lines = log.read_text(errors="replace").splitlines()
        if any(line.startswith(BANNER) for line in lines):
            return lines
        assert process.poll() is None, "\n".join(lines)
        if time.monotonic() > deadline:
            pytest.fail(f"no banner within {START_TIMEOUT_S:.0f}s:\n" + "\n".join(lines))
        time.sleep(0.05)


def test_banner_comes_after_ready_and_worker_started_with_settings_from_the_env_file(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"# the producer's port comes from here\nINGEST_HTTP_PORT={port}\n"
        f"export INGEST_WORKER_HTTP_PORT={free_port()}\nINGEST_LOG_FORMAT='json'\n"
    )
    log = tmp_path / "supervisor.log"
    with supervisor(clean_env(REDIS_URL=redis_url), log, "--env-file", str(env_file)) as process:
        lines = wait_for_banner(process, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as ready:
            assert ready.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(EXIT_TIMEOUT_S) == 0

    banner = next(i for i, line in enumerate(lines) if line.startswith(BANNER))
    started = next(i for i, line in enumerate(lines) if '"worker_started"' in line)
    assert started < banner
    assert f"supervisor: read 3 setting(s) from {env_file}" in lines
    assert f"http://127.0.0.1:{port}" in lines[banner]


def test_a_redis_that_does_not_answer_stops_it_in_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    url = f"redis://ingest:hunter2hunter2@127.0.0.1:{free_port()}/0"
    log = tmp_path / "supervisor.log"
    began = time.monotonic()
    no_env_file = str(tmp_path / "absent.env")
    with supervisor(clean_env(REDIS_URL=url), log, "--env-file", no_env_file) as process:
        code = process.wait(EXIT_TIMEOUT_S)
    lines = log.read_text().splitlines()

    assert code != 0
    assert time.monotonic() - began < 15
    assert len(lines) == 1, lines
    assert "redis://ingest:***@127.0.0.1:" in lines[0]
    assert "did not answer" in lines[0]
    assert "hunter2" not in lines[0]


def test_a_bad_setting_stops_it_before_anything_starts(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    no_env_file = str(tmp_path / "absent.env")
    with supervisor(
        clean_env(INGEST_HTTP_PORT="eighty"), log, "--env-file", no_env_file
    ) as process:
        code = process.wait(EXIT_TIMEOUT_S)

    assert code == 2
    assert log.read_text().splitlines() == [
        "supervisor: INGEST_HTTP_PORT='eighty' is not an integer"
    ]
