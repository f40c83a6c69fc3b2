"""``ingest-worker`` with duplicate collapsing turned off, to measure what collapsing gains.

    python -m bench.nocollapse_worker      # the same environment as ingest-worker

The product worker (``ingest_worker.cli.serve``) with one difference: its BatchProcessor is
built with ``collapse_duplicates=False``, so TS.MADD writes one per-metric sample per event
even when a batch holds several for one (metric, millisecond). Benchmark only.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from ingest_shared.logconfig import configure_logging
from ingest_shared.processor import BatchProcessor
from ingest_shared.schema import TimeWindow
from ingest_shared.settings import load_settings
from ingest_shared.timeseries import SeriesLayout
from ingest_worker import cli

if TYPE_CHECKING:
    from ingest_shared.keys import Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings


def processor_without_collapse(
    redis: RedisClient, settings: Settings, shard: Shard | None = None
) -> BatchProcessor:
    """``ingest_shared.processor.create_processor``, with ``collapse_duplicates=False``."""
    layout = SeriesLayout(
        retention_ms=settings.retention_ms, rollup_retention_ms=settings.rollup_retention_ms
    )
    window = TimeWindow(
        max_clock_skew_ms=settings.max_clock_skew_ms, retention_ms=settings.retention_ms
    )
    return BatchProcessor(
        redis,
        settings.keys,
        settings.consumer_group,
        layout,
        window,
        dead_letter_maxlen=settings.dead_letter_maxlen,
        shard=shard,
        collapse_duplicates=False,
    )


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # serve() builds its processor through this module global.
    cli.create_processor = processor_without_collapse  # type: ignore[attr-defined]
    return asyncio.run(cli.serve(settings))


if __name__ == "__main__":
    sys.exit(main())
