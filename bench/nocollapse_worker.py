"""``ingest-worker`` with duplicate collapsing turned off, to measure what collapsing gains.

    python -m bench.nocollapse_worker      # the same environment as ingest-worker

The product worker (``ingest_worker.cli.serve``) with one difference: its BatchProcessor is
built with ``collapse_duplicates=False``, so TS.MADD writes one per-metric sample per event
even when a batch holds several for one (metric, millisecond). Benchmark only.
"""

from __future__ import annotations

import asyncio
import functools
import sys

from ingest_shared.logconfig import configure_logging
from ingest_shared.processor import create_processor
from ingest_shared.settings import load_settings
from ingest_worker import cli


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # serve() builds its processor through this module global.
    cli.create_processor = functools.partial(  # type: ignore[attr-defined]
        create_processor, collapse_duplicates=False
    )
    return asyncio.run(cli.serve(settings))


if __name__ == "__main__":
    sys.exit(main())
