"""`make run`: a local Redis (unless REDIS_URL is set), the producer and one worker.

Start-up, in order: the settings (the environment, plus ``.env`` when present: the environment
wins), then Redis (the embedded one, or REDIS_URL, which must answer within a few seconds),
then the producer and the worker together. The banner is printed once the producer's
``/ready`` answers 200 and the worker has logged ``worker_started``.

Ctrl-C or SIGTERM stops the producer and the worker together (each finishes the work in hand
within a grace period, then SIGKILL), then Redis, so both can finish while Redis is still up.
If a service exits on its own, the others are stopped and its exit code is returned.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.exceptions

from ingest_devtools.localredis import (
    NO_EMBEDDED_REDIS,
    LocalRedis,
    LocalRedisError,
    embedded_available,
    find_repo_root,
    ping,
)
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_REDIS_PORT = 6379
CHILD_STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
# How long REDIS_URL may take to answer PING before `make run` gives up.
REDIS_ANSWER_TIMEOUT_SECONDS = 5.0
READY_PROBE_TIMEOUT_SECONDS = 1.0
# After this long without both services up, say what is still missing (once).
SLOW_START_SECONDS = 30.0
PRODUCER, WORKER = "ingest-producer", "ingest-worker"
WORKER_STARTED = b"worker_started"
EXIT_FAILED = 1
EXIT_CONFIGURATION = 2


class StartError(Exception):
    """Start-up cannot go on; the message is the one line to show."""


def _say(message: str) -> None:
    print(f"supervisor: {message}", file=sys.stderr, flush=True)


def _script(name: str) -> Path:
    # Console scripts live beside the venv's python; PATH may not include that bin dir.
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StartError(f"{path} not found (run `make install-run`)")
    return path


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; a shell would say 128 + N.
    return 128 - returncode if returncode < 0 else returncode


# --- settings ----------------------------------------------------------------------------


def read_dotenv(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a ``.env`` file (``#`` comments, optional quotes and
    ``export``), as Docker Compose reads them; raises StartError naming a bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartError(f"cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier():
            raise StartError(f"{path}:{number}: expected NAME=value, got {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:  # an unquoted value may end with a comment
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values


def mask_url(url: str) -> str:
    """``url`` with its password (and a lone user-info, which Redis reads as one) as ``***``."""
    netloc = urlsplit(url).netloc
    head, sep, query = url.partition("?")
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        head = head.replace(netloc, f"{user}:***@{hostport}" if colon else f"***@{hostport}", 1)
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
    return head + sep + query


def _environment(env_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    if env_file.is_file():
        from_file = read_dotenv(env_file)
        overridden = sorted(k for k in from_file if k in env)
        note = f"; the environment wins for {', '.join(overridden)}" if overridden else ""
        _say(f"read {len(from_file)} setting(s) from {env_file}{note}")
        env = from_file | env
    if "INGEST_LOG_FORMAT" not in env and sys.stderr.isatty():
        # The worker's stderr goes through a pipe (see _forward): keep its console format.
        env["INGEST_LOG_FORMAT"] = "console"
    return env


# --- Redis -------------------------------------------------------------------------------


def _start_embedded_redis(root: Path) -> LocalRedis:
    if not embedded_available():
        raise StartError(NO_EMBEDDED_REDIS)
    if ping(DEFAULT_REDIS_PORT):
        raise StartError(
            f"something already answers PING on 127.0.0.1:{DEFAULT_REDIS_PORT}; stop it, or use "
            f"it with REDIS_URL=redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0 make run "
            "(it needs RedisTimeSeries)"
        )
    server = LocalRedis(root / ".run" / "redis", port=DEFAULT_REDIS_PORT, appendonly=True)
    try:
        return server.start()
    except LocalRedisError as exc:
        raise StartError(str(exc)) from None


def check_redis(
    url: str,
    timeout: float = REDIS_ANSWER_TIMEOUT_SECONDS,
    tls_options: dict[str, Any] | None = None,
) -> None:
    """Raise StartError (credentials masked) unless the Redis at ``url`` answers PING in time.

    ``tls_options`` are redis-py's ``ssl_*`` arguments for a ``rediss://`` URL.
    """
    shown = mask_url(url)
    extra = tls_options if url.startswith("rediss://") and tls_options else {}
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0, **extra)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as exc:
                # It answers, but not to us: waiting will not help.
                raise StartError(f"Redis at {shown} refused us: {exc}; check REDIS_URL") from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise StartError(
                        f"Redis at {shown} did not answer within {timeout:.0f} s ({exc}); check "
                        "REDIS_URL, or unset it to use the embedded Redis"
                    ) from None
            time.sleep(POLL_SECONDS)
    finally:
        client.close()


# --- the services ------------------------------------------------------------------------


def _forward(stream: IO[bytes], started: threading.Event) -> None:
    """Copy a child's stderr to ours line by line; set ``started`` at ``worker_started``."""
    out = sys.stderr.buffer
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        if WORKER_STARTED in line:
            started.set()
    stream.close()


def _reachable_host(host: str) -> str:
    """Where to reach a server bound to ``host``: loopback when it listens everywhere."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104  # not a bind


def _http_base(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _ready_status(host: str, port: int) -> str:
    """``"200"`` once the producer's /ready says so, else what it answered instead."""
    connection = http.client.HTTPConnection(host, port, timeout=READY_PROBE_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/ready")
        return str(connection.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        connection.close()


def _first_exit(
    children: Mapping[str, subprocess.Popen[bytes]], redis_server: LocalRedis | None
) -> int | None:
    """The exit code to return if a child or the embedded Redis stopped by itself."""
    for name, child in children.items():
        if (code := child.poll()) is not None:
            _say(f"{name} exited with {code}; stopping the rest")
            return _exit_code(code)
    if redis_server is not None and not redis_server.running:
        _say(f"redis-server exited; stopping the rest\n{redis_server.log_tail()}")
        return EXIT_FAILED
    return None


def _wait_until_up(
    children: Mapping[str, subprocess.Popen[bytes]],
    redis_server: LocalRedis | None,
    worker_started: threading.Event,
    *,
    host: str,
    port: int,
    stop: threading.Event,
) -> int | None:
    """None once /ready is 200 and the worker started; else the exit code (0: stop asked)."""
    began = time.monotonic()
    warned = False
    while not stop.wait(POLL_SECONDS):
        if (code := _first_exit(children, redis_server)) is not None:
            return code
        status = _ready_status(host, port)
        if status == "200" and worker_started.is_set():
            return None
        if not warned and time.monotonic() - began > SLOW_START_SECONDS:
            warned = True
            missing = [f"{_http_base(host, port)}/ready ({status})"] if status != "200" else []
            missing += [] if worker_started.is_set() else ["the worker's worker_started"]
            _say(f"still waiting for {' and '.join(missing)}")
    return 0


def _supervise(
    children: Mapping[str, subprocess.Popen[bytes]],
    redis_server: LocalRedis | None,
    stop: threading.Event,
) -> int:
    """Wait for a stop request (returns 0) or a process exiting by itself (its code)."""
    while not stop.wait(POLL_SECONDS):
        if (code := _first_exit(children, redis_server)) is not None:
            return code
    return 0


def _stop_children(children: Mapping[str, subprocess.Popen[bytes]]) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole pipeline in the foreground until Ctrl-C or SIGTERM.

    Everything is configured through the environment (and ``.env``), which the services inherit.
    """
    root = find_repo_root() or Path.cwd()
    parser = argparse.ArgumentParser(prog="python -m ingest_devtools.supervisor")
    parser.add_argument("--env-file", type=Path, default=root / ".env", help="default: .env")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    redis_server: LocalRedis | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    forwarders: list[threading.Thread] = []
    try:
        env = _environment(args.env_file)
        try:
            settings = load_settings(env)
        except ConfigurationError as exc:
            _say(str(exc))
            return EXIT_CONFIGURATION
        if env.get("REDIS_URL", "").strip():
            check_redis(settings.redis_url, tls_options=settings.redis_tls.redis_kwargs())
        else:
            redis_server = _start_embedded_redis(root)
            env["REDIS_URL"] = redis_server.url
        worker_started = threading.Event()
        # Own process groups: Ctrl-C reaches only us, and we stop the children ourselves.
        children[PRODUCER] = subprocess.Popen([_script(PRODUCER)], env=env, process_group=0)
        worker = subprocess.Popen(
            [_script(WORKER)], env=env, stderr=subprocess.PIPE, process_group=0
        )
        children[WORKER] = worker
        assert worker.stderr is not None  # stderr=PIPE
        forwarders.append(
            threading.Thread(target=_forward, args=(worker.stderr, worker_started), daemon=True)
        )
        forwarders[-1].start()
        host, port = _reachable_host(settings.http_host), settings.http_port
        code = _wait_until_up(
            children, redis_server, worker_started, host=host, port=port, stop=stop
        )
        if code is not None:
            return code
        base = _http_base(host, port)
        print(
            f"telemetry-ingest: API {base} (docs at {base}/schema), "
            f"Redis {mask_url(env['REDIS_URL'])}, 1 worker; Ctrl-C to stop",
            flush=True,
        )
        return _supervise(children, redis_server, stop)
    except StartError as exc:
        _say(str(exc))
        return EXIT_FAILED
    finally:
        _stop_children(children)
        for thread in forwarders:
            thread.join(timeout=2)
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
