"""``ingest-worker`` without shard ownership: every process consumes the one stream, as the
releases before shard ownership did. Scenario 10's comparison row, benchmark only.

    INGEST_STREAM_SHARDS=1 python -m bench.shared_stream_worker   # else as ingest-worker

The product worker (``ingest_worker.cli.serve``) with one difference: it runs the shard's
:class:`~ingest_worker.daemon.Worker` loop at once instead of waiting to win the stream's
lease, so two of them read the one stream in the group and write the same per-metric series,
their batches interleaved (the product today: one owner, the others standbys).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from ingest_shared.logconfig import configure_logging
from ingest_shared.processor import create_processor
from ingest_shared.settings import load_settings
from ingest_worker import cli
from ingest_worker.daemon import Worker

if TYPE_CHECKING:
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_worker.monitor import Heartbeat


def shared_stream_runner(redis: RedisClient, settings: Settings, heartbeat: Heartbeat) -> Worker:
    """One consumer of the only stream, whoever else consumes it."""
    shard = settings.keys.shards[0]
    return Worker(redis, create_processor(redis, settings, shard), settings, heartbeat, shard)


def main() -> int:
    settings = load_settings()
    if len(settings.keys.shards) != 1:
        print("bench.shared_stream_worker needs INGEST_STREAM_SHARDS=1", file=sys.stderr)
        return cli.EXIT_CONFIGURATION
    configure_logging(settings.log_level, settings.log_format)
    # serve() builds its runner through this module global.
    cli.runner_for = shared_stream_runner
    return asyncio.run(cli.serve(settings))


if __name__ == "__main__":
    sys.exit(main())
