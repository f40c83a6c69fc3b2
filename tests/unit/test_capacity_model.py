"""The capacity model: the slowest stage sets the rate, and what cannot add capacity does not."""

from __future__ import annotations

import pytest
from bench.model import BATCH, Costs, Deployment, project

COSTS = Costs(producer_us=5.0, worker_us=10.0, redis_us=4.0, usable=1.0)


def test_the_slowest_stage_sets_the_rate() -> None:
    result = project(COSTS, Deployment(producers=1, workers=1))
    assert result.limit == "workers"
    assert result.events_per_s == pytest.approx(100_000)
    assert result.limits["producers"] == pytest.approx(200_000)
    assert result.limits["redis"] == pytest.approx(250_000)


def test_workers_beyond_the_shards_only_stand_by() -> None:
    eight = project(COSTS, Deployment(workers=8, shards=8, producers=10))
    twelve = project(COSTS, Deployment(workers=12, shards=8, producers=10))
    assert twelve.limits["workers"] == eight.limits["workers"] == pytest.approx(800_000)


def test_one_redis_node_caps_what_more_workers_and_producers_can_do() -> None:
    result = project(COSTS, Deployment(producers=8, workers=8, shards=8))
    assert result.limit == "redis"
    assert (
        project(COSTS, Deployment(producers=8, workers=8, shards=8, primaries=3)).limits["redis"]
        > 2 * result.limits["redis"]
    )


def test_a_shared_machine_is_limited_by_its_cores() -> None:
    result = project(COSTS, Deployment(producers=4, workers=4, cores=2))
    assert result.limit == "cores"
    assert result.events_per_s == pytest.approx(2e6 / 19.0)
    assert (
        project(BATCH, Deployment(cores=2)).events_per_s < project(BATCH, Deployment()).events_per_s
    )
