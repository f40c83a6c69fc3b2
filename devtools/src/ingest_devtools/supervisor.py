"""`make run`: a local Redis (unless REDIS_URL is set), the producer and one worker.

Ctrl-C or SIGTERM stops the worker and producer first (each gets a grace period, then
SIGKILL), then Redis, so the services can finish their work while Redis is still up.
If a service exits on its own, the others are stopped and its exit code is returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ingest_devtools.localredis import LocalRedis, LocalRedisError, find_repo_root, ping

DEFAULT_REDIS_PORT = 6379
CHILD_STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
SERVICES = ("ingest-producer", "ingest-worker")


def _say(message: str) -> None:
    print(f"supervisor: {message}", file=sys.stderr, flush=True)


def _script(name: str) -> Path:
    # Console scripts live beside the venv's python; PATH may not include that bin dir.
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run `uv sync --all-packages`)")
    return path


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; a shell would say 128 + N.
    return 128 - returncode if returncode < 0 else returncode


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for name, child in children.items():
        try:
            child.wait(CHILD_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _say(f"{name} ignored SIGTERM for {CHILD_STOP_TIMEOUT_SECONDS:.0f}s; killing it")
            child.kill()
            child.wait()


def _start_redis(root: Path) -> LocalRedis:
    if ping(DEFAULT_REDIS_PORT):
        raise LocalRedisError(
            f"something already answers PING on 127.0.0.1:{DEFAULT_REDIS_PORT}; stop it, or use "
            f"it with REDIS_URL=redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0 make run "
            "(it needs RedisTimeSeries)"
        )
    server = LocalRedis(root / ".run" / "redis", port=DEFAULT_REDIS_PORT, appendonly=True)
    return server.start()


def _supervise(
    children: dict[str, subprocess.Popen[bytes]], redis: LocalRedis | None, stop: threading.Event
) -> int:
    """Wait for a stop request (returns 0) or a process exiting by itself (its code)."""
    while not stop.wait(POLL_SECONDS):
        for name, child in children.items():
            if (code := child.poll()) is not None:
                _say(f"{name} exited with {code}; stopping the rest")
                return _exit_code(code)
        if redis is not None and not redis.running:
            _say(f"redis-server exited; stopping the rest\n{redis.log_tail()}")
            return 1
    return 0


def main() -> int:
    """Run the whole pipeline in the foreground until Ctrl-C or SIGTERM.

    Everything is configured through the environment, which the services inherit.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    root = find_repo_root() or Path.cwd()
    env = dict(os.environ)
    redis: LocalRedis | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if "REDIS_URL" not in env:
            redis = _start_redis(root)
            env["REDIS_URL"] = redis.url
        for name in SERVICES:
            # Own process group: Ctrl-C reaches only us, and we stop children in order.
            children[name] = subprocess.Popen([_script(name)], env=env, process_group=0)
        port = env.get("INGEST_HTTP_PORT", "8080")
        print(
            f"telemetry-ingest: API http://127.0.0.1:{port} (docs at http://127.0.0.1:{port}"
            f"/schema), Redis {env['REDIS_URL']}, 1 worker; Ctrl-C to stop",
            flush=True,
        )
        return _supervise(children, redis, stop)
    except (LocalRedisError, FileNotFoundError) as exc:
        _say(str(exc))
        return 1
    finally:
        _stop_children(children)
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
