"""A real Prometheus server and ``promtool`` (Debian's ``prometheus`` package) for tests.

``.ci/run`` installs the package; where it is missing, :func:`binary` skips the test and says
so. :class:`PrometheusServer` runs ``prometheus`` on a free loopback port with a config the
test writes, reloads it (``POST /-/reload``, which returns once the reload is done), asks its
query API and reads its own ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
NOT_INSTALLED = (
    "{name} is not installed: Debian's `prometheus` package has it (.ci/run installs it)"
)

# One series as a query answers it: its labels (``__name__`` included) and its samples as
# (epoch ms, value).
Series = tuple[dict[str, str], list[tuple[int, float]]]


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; skips the calling test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(NOT_INSTALLED.format(name=name))
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run ``promtool args``; its whole output (stdout then stderr), and fail the test
    with that output when it exits non-zero (promtool exits 1 for errors, 3 for lint
    problems)."""
    done = subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)}: exit {done.returncode}\n{output}"
    return output


@dataclass
class PrometheusServer:
    """``prometheus`` with its config, TSDB and log in ``directory``.

    Use as a context manager: the server is started and ready inside, and stopped (SIGTERM,
    then SIGKILL after ``STOP_TIMEOUT_S``) on the way out if the test did not stop it.
    """

    directory: Path
    config: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as a scrape target (and the ``instance`` label of its own series)."""
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def _write_config(self) -> None:
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(self.config))

    def start(self) -> None:
        """Start the process with ``config``; :meth:`__aenter__` also waits until it is ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with (self.directory / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address={self.address}",
                    "--web.enable-lifecycle",  # POST /-/reload
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def __aenter__(self) -> PrometheusServer:
        self.start()
        try:
            await self._ready()
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while True:
                assert self.process is not None
                assert self.process.poll() is None, f"prometheus exited:\n{self.log[-3000:]}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/-/ready")).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log[-3000:]}"
                await asyncio.sleep(0.1)

    async def reload(self, config: dict[str, Any]) -> None:
        """Apply ``config`` now: scrape pools of jobs it drops are stopped when this returns."""
        self.config = config
        self._write_config()
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            response = await http.post("/-/reload")
        assert response.status_code == 200, f"reload: {response.text}\n{self.log[-3000:]}"

    async def _query(self, promql: str, at_s: float | None) -> dict[str, Any]:
        params = {"query": promql, "time": f"{time.time() if at_s is None else at_s:.3f}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            response = await http.get("/api/v1/query", params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def query(self, promql: str, at_s: float | None = None) -> list[Series]:
        """The matrix a range-vector query (``metric[1m]``) answers: raw samples."""
        data = await self._query(promql, at_s)
        assert data["resultType"] == "matrix", data["resultType"]
        return [
            (
                item["metric"],
                [(round(float(at) * 1000), float(value)) for at, value in item["values"]],
            )
            for item in data["result"]
        ]

    async def scraped(self, jobs: int, times: int, within_s: float = START_TIMEOUT_S) -> None:
        """Wait until each of ``jobs`` jobs has been scraped ``times`` times (the first scrape
        comes up to ~5 s after the start: the scrape manager applies targets on a ticker)."""
        deadline = time.monotonic() + within_s
        while True:
            data = await self._query("count_over_time(up[10m])", None)
            counts = {item["metric"]["job"]: int(item["value"][1]) for item in data["result"]}
            if len(counts) >= jobs and min(counts.values()) >= times:
                return
            assert time.monotonic() < deadline, f"scrapes after {within_s} s: {counts}"
            await asyncio.sleep(0.2)

    async def own_metrics(self) -> dict[str, float]:
        """Its own ``/metrics`` now, summed over label sets by sample name."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200, response.text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def stop(self) -> int:
        """SIGTERM (it flushes the remote-write queues and closes the TSDB); the exit status."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
