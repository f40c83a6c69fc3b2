"""The benchmark harness still runs end to end (tiny sizes; nothing here is timed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from bench.smoke import run_smoke

if TYPE_CHECKING:
    from pathlib import Path


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
