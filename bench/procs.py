"""Child processes of the bench: HTTP servers and workers, their CPU and their memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.config import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
RSS_SAMPLE_INTERVAL_S = 0.2


class ServerError(RuntimeError):
    """A child process could not be started or did not become ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def venv_script(name: str) -> Path | None:
    """A console script installed beside this interpreter (the workspace venv), if any."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def uvicorn_argv(app: str, port: int, workers: int = 1) -> list[str]:
    """The producer's uvicorn settings: uvloop + httptools when installed, no access log."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", HOST, "--port", str(port),
        "--workers", str(workers),
        "--loop", "auto", "--http", "auto",
        "--no-access-log", "--no-server-header", "--log-level", "warning",
    ]  # fmt: skip


def http_ready(url: str, method: str = "GET", json_body: object = None) -> Callable[[], bool]:
    """A readiness check: True once `url` answers 200."""

    def check() -> bool:
        try:
            response = httpx.request(method, url, json=json_body, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    return check


@dataclass
class Server:
    """One child process (with its own process group), its log and its readiness check."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_dir: Path
    ready: Callable[[], bool] | None = None
    port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.name} is not running")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                cwd=REPO_ROOT,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        deadline = time.monotonic() + timeout
        while self.ready is not None and not self.ready():
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the process group we created, then SIGKILL to it after `timeout`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        # uvicorn's worker processes share the group; make sure none outlives the parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (uvicorn workers)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, ServerError):
            return []

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds (user + system) of each process of the tree."""
        used: dict[int, float] = {}
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = proc.cpu_times()
                used[proc.pid] = times.user + times.system
        return used

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def own_cpu_seconds() -> float:
    """CPU seconds of this (the harness) process: the probe and client loops run here."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass
class RssTrack:
    """RSS samples of one server over its life, with named checkpoints."""

    name: str
    samples: list[tuple[float, int]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


class RssSampler:
    """A background thread sampling the RSS (whole process tree) of registered servers."""

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.tracks: dict[str, RssTrack] = {}
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def watch(self, server: Server) -> RssTrack:
        with self._lock:
            track = self.tracks.setdefault(server.name, RssTrack(server.name))
            self._servers[server.name] = server
        return track

    def unwatch(self, server: Server) -> None:
        self.sample_now(server.name)
        with self._lock:
            self._servers.pop(server.name, None)

    def sample_now(self, name: str) -> int:
        with self._lock:
            server = self._servers.get(name)
            track = self.tracks.get(name)
        if server is None or track is None or not server.alive():
            return 0
        rss = server.rss_bytes()
        if rss:
            with self._lock:
                track.samples.append((time.monotonic(), rss))
        return rss

    def mark(self, name: str, label: str) -> None:
        """Record the current RSS of `name` under `label` (e.g. 'warm', 'end')."""
        rss = self.sample_now(name)
        if rss:
            with self._lock:
                self.tracks[name].marks[label] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                names = list(self._servers)
            for name in names:
                self.sample_now(name)
