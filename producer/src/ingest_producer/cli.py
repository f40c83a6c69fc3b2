"""``ingest-producer``: serve the API with uvicorn on INGEST_HTTP_HOST:INGEST_HTTP_PORT.

The HTTP limits (INGEST_HTTP_*) are uvicorn's keep-alive timeout plus ``serving``'s protocol.
Forwarded headers are believed only from INGEST_TRUSTED_PROXIES (none by default).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import uvicorn

from ingest_producer import serving
from ingest_producer.asgi import MULTIPROC_DIR_VARIABLE, build_app
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.logconfig import configure_logging
from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

ASGI_FACTORY = "ingest_producer.asgi:create_asgi_app"
EXIT_CONFIGURATION = 2
EXIT_STARTUP_FAILED = 3


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal-initiated graceful shutdown exits normally.

    uvicorn re-raises SIGTERM after shutting down, so the process dies of it (status -15);
    a service that finished its requests and closed its Redis client should exit 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the worker processes (kept if the user set one)."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        yield
        return
    path = tempfile.mkdtemp(prefix="ingest-producer-metrics-")
    os.environ[MULTIPROC_DIR_VARIABLE] = path  # inherited by the processes uvicorn spawns
    try:
        yield
    finally:
        # Both go: a process started later by this one must not inherit a deleted directory.
        del os.environ[MULTIPROC_DIR_VARIABLE]
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    """Parse the settings once, configure logging, serve until SIGTERM/SIGINT.

    Exit status: 0 after a signal, 2 for a bad setting, 3 if the app failed to start.
    """
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"ingest-producer: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    configure_logging(settings.log_level, settings.log_format)
    guard = serving.guard_for(settings, serving.fit_descriptor_limit(settings.http_max_connections))
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "loop": "auto",  # uvloop when installed
        "http": serving.http_protocol(guard),  # uvicorn's httptools protocol, limited
        "ws": "none",  # no WebSocket routes: Upgrade requests are served as plain HTTP
        "timeout_keep_alive": settings.http_keepalive_s,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,  # keep the structlog setup above
        "server_header": False,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_s),
        # uvicorn believes X-Forwarded-For from loopback by default, which would let any local
        # client pick its address (and so its rate-limit budget): only INGEST_TRUSTED_PROXIES.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }
    if settings.http_workers > 1:
        # Several processes need an import string; each process then runs the factory. They
        # share their metrics through files in one directory, made fresh for this run.
        with _multiprocess_metrics_dir():
            uvicorn.run(ASGI_FACTORY, factory=True, workers=settings.http_workers, **options)
        return
    try:
        app = build_app(settings)
    except ConfigurationError as exc:  # found once Redis answered (e.g. it is a cluster)
        print(f"ingest-producer: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    server = Server(uvicorn.Config(app, **options))
    server.run()
    if not server.started:
        raise SystemExit(EXIT_STARTUP_FAILED)
