"""Fault tests: the ``chaos`` marker, a time limit that grows with the chaos scale, and the
loss checker's table at the end of the run (one row per fault test that recorded a report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from tests.faults.checker import Report, table
from tests.faults.harness import SCALE_VARIABLE, chaos_scale

if TYPE_CHECKING:
    from collections.abc import Callable

    from _pytest.terminal import TerminalReporter

# A chaos test at CI size takes well under a minute; at scale N about N times its load time.
CHAOS_TIMEOUT_S = 150
CHAOS_TIMEOUT_PER_SCALE_S = 20
REPORTS = pytest.StashKey[list[Report]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"chaos: a fault under load judged by the loss checker; {SCALE_VARIABLE} scales it "
        "(`make chaos`)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    limit = CHAOS_TIMEOUT_S + CHAOS_TIMEOUT_PER_SCALE_S * max(0.0, chaos_scale() - 1)
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.timeout(round(limit)))


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Report], None]:
    """Keep a checker report for the table printed at the end of the run."""
    reports = request.config.stash.setdefault(REPORTS, [])

    def keep(report: Report) -> None:
        report.name = report.name or request.node.name.removeprefix("test_")
        reports.append(report)

    return keep


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    reports = config.stash.get(REPORTS, [])
    if not reports:
        return
    terminalreporter.section(f"loss checker ({SCALE_VARIABLE}={chaos_scale():g})")
    for line in table(reports):
        terminalreporter.write_line(line)
