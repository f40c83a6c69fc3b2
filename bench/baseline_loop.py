"""The tutorial baseline's "worker": a loop calling its process route, in its own process.

    python -m bench.baseline_loop http://127.0.0.1:PORT [COUNT]

The tutorial drains the stream by calling ``POST /api/ingest/workers/process`` (here with
``count`` 1000 by default) again and again; when a call reads nothing the loop waits 5 ms
(the tutorial's loop would wait too). Runs until SIGTERM. Benchmark only.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from types import FrameType

PROCESS_PATH = "/api/ingest/workers/process"
IDLE_WAIT_S = 0.005
ERROR_WAIT_S = 0.5


def main(argv: list[str]) -> int:
    base_url = argv[1]
    count = int(argv[2]) if len(argv) > 2 else 1000
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        while not stopping:
            try:
                response = http.post(PROCESS_PATH, json={"consumer": "bench", "count": count})
            except httpx.HTTPError as exc:
                print(f"baseline loop: {exc}", file=sys.stderr, flush=True)
                time.sleep(ERROR_WAIT_S)
                continue
            if response.status_code != 200:
                print(f"baseline loop: {response.status_code}", file=sys.stderr, flush=True)
                time.sleep(ERROR_WAIT_S)
            elif not response.json().get("read"):
                time.sleep(IDLE_WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
