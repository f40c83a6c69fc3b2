"""The ``ingest-producer`` entry point: settings once, a one-line error, uvicorn's options."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import uvicorn
from litestar import Litestar

from ingest_producer import cli

Calls = list[tuple[str, Any, dict[str, Any]]]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Records what main() would run instead of serving."""
    recorded: Calls = []

    def run_server(server: uvicorn.Server, sockets: object = None) -> None:
        recorded.append(("server", server.config.app, vars(server.config)))
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run_server)
    monkeypatch.setattr(
        "uvicorn.run", lambda app, **options: recorded.append(("run", app, options))
    )
    # Logging setup is global; the entry point's choice of level and format is what matters.
    monkeypatch.setattr(
        cli, "configure_logging", lambda level, fmt: recorded.append(("logging", level, {}))
    )
    for name in os.environ:
        if name.startswith(("INGEST_", "REDIS_")):
            monkeypatch.delenv(name)
    return recorded


def test_a_bad_setting_exits_2_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], calls: Calls
) -> None:
    monkeypatch.setenv("INGEST_HTTP_PORT", "eighty")

    with pytest.raises(SystemExit) as exited:
        cli.main()

    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr == "ingest-producer: INGEST_HTTP_PORT='eighty' is not an integer\n"
    assert calls == []


def test_one_process_serves_the_app_object_on_the_configured_address(
    monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    monkeypatch.setenv("INGEST_HTTP_PORT", "9123")
    monkeypatch.setenv("INGEST_LOG_LEVEL", "warning")

    cli.main()

    (_, level, _), (kind, app, config) = calls
    assert (level, kind) == ("warning", "server")
    assert isinstance(app, Litestar)
    assert (config["host"], config["port"], config["workers"]) == ("127.0.0.1", 9123, 1)
    assert config["access_log"] is False
    assert config["log_config"] is None


def test_several_processes_use_the_factory_import_string(
    monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    monkeypatch.setenv("INGEST_HTTP_WORKERS", "3")

    cli.main()

    kind, app, options = calls[-1]
    assert (kind, app) == ("run", "ingest_producer.asgi:create_asgi_app")
    assert options["factory"] is True
    assert options["workers"] == 3
    assert options["access_log"] is False
    # The processes shared a metrics directory while they ran; it is gone, and so is the variable.
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_graceful_shutdown_after_sigterm_does_not_re_raise_it() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
    try:
        server = cli.Server(uvicorn.Config(Litestar()))
        with server.capture_signals():
            signal.raise_signal(signal.SIGTERM)
            assert server.should_exit
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Plain uvicorn re-raises it here: with the default handler the process would die of it.
    assert received == []
