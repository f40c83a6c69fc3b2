"""The soak's growth verdict on synthetic series: it flags what grows and passes what does not."""

from __future__ import annotations

import math
import random

from bench.soak import MIB, Sample, theil_sen, verdict

OFFERED = 40_000.0
DAY_S = 86_400.0


def samples(n: int = 60, **trends: float) -> list[Sample]:
    """``n`` samples 10 s apart around steady values; ``trends`` adds units per second to a
    field (with some noise everywhere)."""
    rng = random.Random(3)
    out = []
    for i in range(n):
        t = 10.0 * i

        def value(name: str, base: float, noise: float, t: float = t) -> float:
            return base + trends.get(name, 0.0) * t + rng.uniform(-noise, noise)

        series = value("series_bytes", 50 * MIB, 0)
        out.append(
            Sample(
                t=t,
                producer_rss=int(value("producer_rss", 90 * MIB, 0.3 * MIB)),
                survivor_rss=int(value("survivor_rss", 65 * MIB, 0.3 * MIB)),
                victim_rss=int(value("victim_rss", 65 * MIB, 5 * MIB)),
                redis_rss=int(value("redis_rss", 60 * MIB, 0.3 * MIB) + series - 50 * MIB),
                used_memory=int(value("used_memory", 40 * MIB, 0.3 * MIB) + series - 50 * MIB),
                series_bytes=int(series),
                series=4_000,
                backlog=max(0, int(value("backlog", 50, 50))),
                pending=0,
                added=int(OFFERED * t),
                dead_letters=0,
                accepted_per_s=OFFERED,
                non_2xx=0,
                batch_p99_ms=value("batch_p99_ms", 20, 3),
                single_p99_ms=value("single_p99_ms", 15, 3),
                e2e_p99_ms=None,
                probe_timeouts=0,
                dashboard_calls=10,
                dashboard_p99_ms=30.0,
                reader_calls=40,
                reader_p99_ms=50.0,
                read_refused=0,
                read_failed=0,
            )
        )
    return out


def growing(run: list[Sample], retention_s: float = DAY_S) -> list[str]:
    return [g.series for g in verdict(run, OFFERED, retention_s) if g.grows]


def test_steady_series_do_not_grow() -> None:
    assert growing(samples()) == []


def test_a_leaking_producer_is_flagged() -> None:
    # 30 KiB/s: +8.6 MiB over the 5-minute second half of a 90 MiB process (limit: 5%).
    assert growing(samples(producer_rss=30 * 1024)) == ["producer RSS"]
    assert growing(samples(producer_rss=5 * 1024)) == []


def test_a_backlog_that_keeps_growing_is_flagged_and_spikes_after_kills_are_not() -> None:
    assert growing(samples(backlog=400.0)) == ["backlog (lag + pending)"]
    spiky = samples()
    for s in spiky[35:38] + spiky[50:52]:  # two kills: the backlog jumps, then drains
        s.backlog = 600_000
    assert growing(spiky) == []


def test_redis_may_grow_by_its_series_until_the_retention_is_reached() -> None:
    run = samples(series_bytes=20 * 1024)
    assert growing(run) == []
    assert "Redis used_memory" in growing(run, retention_s=100.0)


def test_redis_memory_outside_the_series_must_not_grow() -> None:
    found = growing(samples(used_memory=20 * 1024))
    assert found == [
        "Redis used_memory",
        "Redis used_memory outside the series (streams, keys, buffers)",
    ]


def test_a_latency_that_doubles_is_flagged() -> None:
    assert growing(samples(batch_p99_ms=0.2)) == ["ingest p99, batches of 100 (HTTP)"]


def test_theil_sen_ignores_outliers() -> None:
    ts = [float(t) for t in range(20)]
    ys = [2.0 * t for t in ts]
    ys[18] = 1e9
    assert math.isclose(theil_sen(ts, ys), 2.0)


def test_a_growing_backlog_explains_the_streams_memory() -> None:
    run = samples(backlog=400.0, used_memory=40 * 1024)
    outside = next(g for g in verdict(run, OFFERED, DAY_S) if "outside" in g.series)
    assert outside.grows
    assert "the streams hold the growing backlog" in outside.why
