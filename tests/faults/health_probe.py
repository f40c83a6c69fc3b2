"""Poll a producer's ``GET /health`` until SIGTERM, then print what was seen as one JSON object.

Run as a script (``python tests/faults/health_probe.py PORT INTERVAL_S``) by
``tests.faults.harness.HealthProbe``: a process of its own, so the latency it measures is the
producer's, not the event loop or the GIL of the test process that runs the load.
Times are ``time.monotonic()`` (one clock for every process on Linux).
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
from typing import Any

TIMEOUT_S = 5.0


def probe(port: int, interval_s: float, stop: threading.Event) -> dict[str, Any]:
    """Probe until ``stop``: ``{"samples": [[start, seconds], ...], "failures": [...]}``."""
    samples: list[tuple[float, float]] = []
    failures: list[str] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        while not stop.wait(interval_s):
            at, started = time.monotonic(), time.perf_counter()
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                continue
            samples.append((at, time.perf_counter() - started))
            if response.status != 200:
                failures.append(f"status {response.status}")
    finally:
        connection.close()
    return {"samples": samples, "failures": failures}


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = probe(int(sys.argv[1]), float(sys.argv[2]), stop)
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
