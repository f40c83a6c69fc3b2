"""``ingest-worker`` that dies between storing a batch and acknowledging it (test-only).

Run as a script: ``FAULT_CRASH_AT_ACK=N python tests/faults/crashing_worker.py``. The Nth
acknowledgement of the process never happens: the process exits at once with status 137 (as
if SIGKILLed) after the batch's samples and dead letters were written and before its XACK.
With ``FAULT_CRASH_REPORT=<file>`` it first writes the stream and ids of that batch there,
``<stream> <id>`` a line (the consumer may hold more pending entries: the batch it read
ahead). Everything else is the real worker (``ingest_worker.cli.main``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest_shared.processor import BatchProcessor
from ingest_worker import cli

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

CRASH_VARIABLE = "FAULT_CRASH_AT_ACK"
REPORT_VARIABLE = "FAULT_CRASH_REPORT"
CRASH_STATUS = 137


def crash_at_ack(
    nth: int,
    ack: Callable[[BatchProcessor, list[bytes]], Coroutine[Any, Any, int]],
    report: Path | None = None,
) -> Callable[[BatchProcessor, list[bytes]], Coroutine[Any, Any, int]]:
    """``ack``, except that its ``nth`` call ends the process instead (after writing the ids
    it was given to ``report``)."""
    calls = 0

    async def ack_or_die(self: BatchProcessor, ids: list[bytes]) -> int:
        nonlocal calls
        calls += 1
        if calls >= nth:
            if report is not None:
                # Blocking is harmless: nothing else runs in this process any more.
                stream = self._stream
                report.write_bytes(b"\n".join(stream + b" " + i for i in ids))  # noqa: ASYNC240
            os._exit(CRASH_STATUS)
        return await ack(self, ids)

    return ack_or_die


if __name__ == "__main__":
    report = os.environ.get(REPORT_VARIABLE)
    BatchProcessor._ack = crash_at_ack(  # type: ignore[method-assign,assignment]
        int(os.environ[CRASH_VARIABLE]), BatchProcessor._ack, Path(report) if report else None
    )
    cli.main()
