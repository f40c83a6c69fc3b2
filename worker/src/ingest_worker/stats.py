"""Throughput counters behind the worker's periodic and final summary log lines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingest_shared.processor import BatchResult

SUMMARY_INTERVAL_S = 30.0


class Throughput:
    """Counts batches, stored and dead-lettered events, overall and since the last summary."""

    def __init__(
        self, interval_s: float = SUMMARY_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._started = self._since = clock()
        self._batches = self._processed = self._dead_lettered = 0
        self._total_batches = self._total_processed = self._total_dead_lettered = 0

    def add(self, result: BatchResult) -> None:
        """Count one processed batch."""
        self._batches += 1
        self._processed += result.processed
        self._dead_lettered += result.dead_lettered

    def summary_due(self) -> bool:
        """True once ``interval_s`` has passed since the last :meth:`take_summary`."""
        return self._clock() - self._since >= self._interval_s

    def take_summary(self) -> dict[str, float | int]:
        """Counts since the last summary (and their rate), then start a new interval."""
        now = self._clock()
        elapsed = max(now - self._since, 1e-9)
        summary = {
            "batches": self._batches,
            "processed": self._processed,
            "dead_lettered": self._dead_lettered,
            "events_per_s": round((self._processed + self._dead_lettered) / elapsed, 1),
            "interval_s": round(elapsed, 1),
        }
        self._total_batches += self._batches
        self._total_processed += self._processed
        self._total_dead_lettered += self._dead_lettered
        self._batches = self._processed = self._dead_lettered = 0
        self._since = now
        return summary

    def totals(self) -> dict[str, float | int]:
        """Counts since start, for the final line."""
        return {
            "batches": self._total_batches + self._batches,
            "processed": self._total_processed + self._processed,
            "dead_lettered": self._total_dead_lettered + self._dead_lettered,
            "uptime_s": round(self._clock() - self._started, 1),
        }
