"""The benchmark harness still runs end to end (tiny sizes; nothing here is timed)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
from bench.smoke import run_smoke

if TYPE_CHECKING:
    from pathlib import Path


def wrk_smoke(tmp_path: Path, scenario: int) -> dict[str, Any]:
    """The smoke run of one scenario that needs wrk (skipped without it)."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (CI installs it)")
    return run_smoke(tmp_path, scenarios=(scenario,))


@pytest.mark.timeout(180)
def test_bench_smoke_run_measures_ceilings_worker_and_baseline(tmp_path: Path) -> None:
    results = run_smoke(tmp_path)

    figures = results["figures"]
    assert figures["ceiling.xadd.c1"]["median"] > 0
    assert figures["baseline.drain.c10"]["median"] > 0
    drains = [name for name in figures if name.startswith("worker.drain")]
    assert drains, sorted(figures)
    assert any((figures[name]["median"] or 0) > 0 for name in drains), {
        name: figures[name] for name in drains
    }
    assert not results["errors"], results["errors"]


@pytest.mark.timeout(180)
def test_bench_smoke_run_measures_each_protocol_beside_json_batches(tmp_path: Path) -> None:
    results = wrk_smoke(tmp_path, 11)

    figures = results["figures"]
    for name in ("protocols.json.1000", "protocols.influx", "protocols.remotewrite"):
        assert (figures[name]["median"] or 0) > 0, figures[name]
    assert (figures["protocols.otlp"]["median"] or 0) > 0, figures["protocols.otlp"]
    assert not results["errors"], results["errors"]


@pytest.mark.timeout(180)
def test_bench_smoke_run_measures_ingest_idle_and_beside_readers(tmp_path: Path) -> None:
    results = wrk_smoke(tmp_path, 12)

    figures = results["figures"]
    for name in ("mixed.single.idle", "mixed.single.loaded"):
        assert (figures[name]["median"] or 0) > 0, figures[name]  # a p99 in ms
    for name in ("mixed.batch.idle", "mixed.batch.loaded"):
        assert (figures[name]["median"] or 0) > 0, figures[name]
    [reads] = results["data"]["mixed"]["reads"]
    assert reads["reads_per_s"] > 0
    assert not results["errors"], results["errors"]
