"""`make soak` at CI size: the whole pipeline under load for ~45 s, a worker SIGKILLed every 15 s.

Nothing here judges the machine's speed: the run must complete, everything accepted must be
stored, samples must be taken and the growth verdict computed and written.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import pytest
from bench.soak import SoakConfig, run_soak, write

if TYPE_CHECKING:
    from pathlib import Path

CI_SOAK = SoakConfig(
    duration_s=45.0,
    rate=4_000,
    single_rate=100,
    kill_every_s=15.0,
    sample_every_s=2.0,
    # The kills are scaled down: so is the time after which a dead consumer's entries are
    # claimed (60 s by default: longer than the run).
    claim_idle_ms=5_000,
    install_wrk=False,
)


@pytest.mark.timeout(300)
def test_soak_at_ci_size_stores_everything_accepted_across_worker_kills(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (CI installs it)")
    report = run_soak(CI_SOAK, workdir=tmp_path)

    assert report.completed, report.problems
    assert report.final["accepted"] > 100_000, report.final
    assert report.final["stored"] == report.final["accepted"]
    assert (report.final["backlog"], report.final["pending"]) == (0, 0)
    assert report.final["dead_letters"] == 0
    assert len(report.kills) == 2, report.kills
    assert all(kill["restarted"] for kill in report.kills)
    assert len(report.samples) >= 15
    assert all(s.producer_rss and s.survivor_rss and s.used_memory for s in report.samples)
    assert any(s.dashboard_calls for s in report.samples)
    assert any(s.reader_calls for s in report.samples)
    assert {g.series for g in report.growth} >= {"producer RSS", "backlog (lag + pending)"}

    written = write(report, tmp_path / "results")
    assert sorted(p.suffix for p in written) == [".json", ".md", ".png"]
    document = json.loads((tmp_path / "results" / f"{report.meta['date']}-soak.json").read_text())
    assert len(document["verdict"]) == len(report.growth)
    assert "## Verdict" in (tmp_path / "results" / f"{report.meta['date']}-soak.md").read_text()
