"""The Redis sizing measurement (`python -m bench.sizing`) still runs, at a tiny size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from bench.sizing import SizingConfig, estimate, render, run_sizing

from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(60)
async def test_sizing_measures_series_and_samples_and_estimates_a_fleet(tmp_path: Path) -> None:
    tiny = SizingConfig(devices=10, metrics=2, samples=1_000, sample_series=10)
    unlabelled, labelled = await run_sizing(tiny, workdir=tmp_path)

    assert (unlabelled.labelled, labelled.labelled) == (False, True)
    for sizing in (unlabelled, labelled):
        assert sizing.per_series > 1_000  # a raw series, its rollup and a rule: KiB, not bytes
        assert sizing.per_metric > 0
        assert all(0 < per_event < 1_000 for per_event in sizing.per_event.values())
        assert sizing.per_rollup_sample > 0
    assert labelled.per_series > unlabelled.per_series  # the labels are stored per series
    settings = load_settings({})
    small = estimate(unlabelled, settings, devices=10, metrics=2, rate_per_s=0.1)
    assert estimate(unlabelled, settings, devices=20, metrics=2, rate_per_s=0.1) > small
    assert "| labelled (3 labels) |" in render([unlabelled, labelled], settings)
