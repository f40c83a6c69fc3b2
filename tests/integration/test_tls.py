"""TLS to Redis: a throwaway CA made here, the embedded server speaking TLS only, both services.

The certificates come from the ``openssl`` CLI (``cryptography`` is not a dependency). The server
certificate names 127.0.0.1 and has no extendedKeyUsage, so the embedded server's readiness
check can present it as a client certificate too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ingest_devtools.localredis import LocalRedis, TlsFiles, embedded_available
from ingest_producer.asgi import build_app, create_asgi_app
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.redis_client import call, create_redis
from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from httpx import AsyncClient
    from tests.conftest import AppClient

    from ingest_shared.settings import Settings

WORKER_BIN = Path(sys.executable).parent / "ingest-worker"
METRIC, SOURCE, VALUE = "cpu", "sensor-tls", 12.5
EVENT = {"source": SOURCE, "metric": METRIC, "value": VALUE}
# Long enough for a slow CI machine, short enough that "retried forever" fails the test.
PROCESS_WAIT_S = 15.0
CA = "INGEST_REDIS_TLS_CA_FILE"
CERT = "INGEST_REDIS_TLS_CERT_FILE"
KEY = "INGEST_REDIS_TLS_KEY_FILE"
VERIFY = "INGEST_REDIS_TLS_VERIFY"


# --- a throwaway PKI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server: Leaf  # 127.0.0.1 and localhost, signed by ca
    server_elsewhere: Leaf  # only redis.example, signed by ca
    client: Leaf  # signed by ca
    stranger: Leaf  # a client certificate signed by other_ca
    encrypted_key: Path  # client.key under a passphrase
    combined: Path  # client certificate and key in one PEM


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _new_ca(folder: Path, name: str) -> Leaf:
    leaf = Leaf(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(leaf.key), "-out", str(leaf.cert), "-days", "2", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    return leaf


def _new_leaf(folder: Path, name: str, ca: Leaf, alt_names: str | None = None) -> Leaf:
    leaf = Leaf(folder / f"{name}.crt", folder / f"{name}.key")
    csr, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n" + (f"subjectAltName={alt_names}\n" if alt_names else "")
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(leaf.key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(63)), "-days", "2", "-extfile", str(extensions),
        "-out", str(leaf.cert),
        cwd=folder,
    )  # fmt: skip
    return leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = _new_ca(folder, "test-ca"), _new_ca(folder, "other-ca")
    client = _new_leaf(folder, "ingest", ca)
    encrypted = folder / "encrypted.key"
    _openssl(
        "pkey", "-in", str(client.key), "-aes256", "-passout", "pass:secret",
        "-out", str(encrypted),
        cwd=folder,
    )  # fmt: skip
    combined = folder / "combined.pem"
    combined.write_bytes(client.cert.read_bytes() + client.key.read_bytes())
    return Pki(
        ca=ca.cert,
        other_ca=other_ca.cert,
        server=_new_leaf(folder, "redis", ca, "IP:127.0.0.1,DNS:localhost"),
        server_elsewhere=_new_leaf(folder, "elsewhere", ca, "DNS:redis.example"),
        client=client,
        stranger=_new_leaf(folder, "stranger", other_ca),
        encrypted_key=encrypted,
        combined=combined,
    )


# --- servers, settings, the two services --------------------------------------------------


class TlsServer(Protocol):
    def __call__(
        self, leaf: Leaf | None = None, require_client_cert: bool = False
    ) -> LocalRedis: ...


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[TlsServer]:
    """Start embedded servers that speak TLS only, with ``pki.server`` unless told otherwise."""
    if not embedded_available():
        pytest.skip("TLS tests need the embedded Redis (its binaries are built with TLS)")
    servers: list[LocalRedis] = []

    def start(leaf: Leaf | None = None, require_client_cert: bool = False) -> LocalRedis:
        leaf = leaf or pki.server
        tls = TlsFiles(leaf.cert, leaf.key, pki.ca, require_client_cert=require_client_cert)
        server = LocalRedis(tmp_path / f"redis-{len(servers)}", tls=tls)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def env_for(server: LocalRedis, **tls: str | Path) -> dict[str, str]:
    return {"REDIS_URL": server.url} | {name: str(value) for name, value in tls.items()}


def worker_env(env: dict[str, str]) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INGEST_") and name != "REDIS_URL"
    }
    fast = {
        "INGEST_BLOCK_MS": "100",
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_CONSUMER_NAME": "tls",
        "INGEST_LOG_FORMAT": "json",
    }
    return inherited | fast | env


async def run_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        WORKER_BIN,
        env=worker_env(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def worker_exit(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Wait for a worker that should stop by itself; its exit status and stderr."""
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), PROCESS_WAIT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def misconfigured_error(stderr: str) -> str:
    """The ``error`` of the one ``worker_misconfigured`` log line."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [line] = [line for line in lines if line["event"] == "worker_misconfigured"]
    assert isinstance(line["error"], str)
    return line["error"]


@dataclass
class Producer:
    http: AsyncClient

    async def ready(self) -> tuple[int, str | None]:
        response = await self.http.get("/ready")
        return response.status_code, response.json().get("reason")

    async def post(self) -> int:
        return (await self.http.post("/api/ingest/events", json=EVENT)).status_code


async def stored_value(settings: Settings) -> float | None:
    """The event's value in its per-device series, read over TLS with the same settings."""
    redis = create_redis(settings.redis_url, socket_timeout=5.0, tls=settings.redis_tls)
    try:
        key = settings.keys.source_raw(METRIC, SOURCE)
        sample = await call(redis, "TS.GET", key) if await redis.exists(key) else None
    finally:
        await redis.aclose()
    return float(sample[1]) if sample else None


async def eventually_stored(settings: Settings) -> float | None:
    for _ in range(int(PROCESS_WAIT_S / 0.05)):
        if (value := await stored_value(settings)) is not None:
            return value
        await asyncio.sleep(0.05)
    return None


# --- it works -----------------------------------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True], ids=["ca-file-only", "mutual-tls"])
async def test_producer_appends_and_worker_stores_over_tls(
    tls_server: TlsServer, pki: Pki, serve: AppClient, mutual: bool
) -> None:
    server = tls_server(require_client_cert=mutual)
    files = {CA: pki.ca}
    if mutual:
        files |= {CERT: pki.client.cert, KEY: pki.client.key}
    env = env_for(server, **files)
    settings = load_settings(env)

    async with serve(build_app(settings)) as http:
        producer = Producer(http)
        assert await producer.ready() == (200, None)
        assert await producer.post() == 200
    worker = await run_worker(env)
    try:
        assert await eventually_stored(settings) == VALUE
    finally:
        worker.send_signal(signal.SIGTERM)
        status, stderr = await worker_exit(worker)
    assert status == 0, stderr


async def test_the_server_speaks_tls_only(tls_server: TlsServer) -> None:
    server = tls_server()
    plain = Redis.from_url(server.url.replace("rediss://", "redis://"), socket_timeout=2.0)
    try:
        with pytest.raises(RedisConnectionError):
            await plain.ping()
    finally:
        await plain.aclose()


async def test_certificate_files_renewed_in_place_are_used_by_the_next_connection(
    tls_server: TlsServer, pki: Pki, tmp_path: Path
) -> None:
    server = tls_server(require_client_cert=True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.client.cert, cert)
    shutil.copyfile(pki.client.key, key)
    settings = load_settings(env_for(server, **{CA: pki.ca, CERT: cert, KEY: key}))
    redis = create_redis(settings.redis_url, socket_timeout=5.0, tls=settings.redis_tls)
    try:
        assert await redis.ping()
        # A certificate the server does not trust replaces the files; the pooled connection
        # object reconnects after the server drops it, and must present the new one.
        shutil.copyfile(pki.stranger.cert, cert)
        shutil.copyfile(pki.stranger.key, key)
        await redis.connection_pool.disconnect()

        with pytest.raises(RedisConnectionError, match="unknown ca"):
            await redis.ping()
    finally:
        await redis.aclose()


# --- refused, and said why ----------------------------------------------------------------


@pytest.mark.parametrize("trusted", ["other-ca", "system-cas"])
async def test_a_server_certificate_from_another_ca_is_refused_and_reported(
    tls_server: TlsServer, pki: Pki, serve: AppClient, trusted: str
) -> None:
    server = tls_server()
    env = env_for(server, **{CA: pki.other_ca}) if trusted == "other-ca" else env_for(server)

    async with serve(build_app(load_settings(env))) as http:
        producer = Producer(http)
        status, reason = await producer.ready()
        assert status == 503
        assert reason is not None
        # /ready says what to fix, as the worker does.
        assert reason.startswith("TLS to Redis failed: Redis's certificate was not accepted")
        assert CA in reason
        assert await producer.post() == 503
    status, stderr = await worker_exit(await run_worker(env))
    assert status == 2
    error = misconfigured_error(stderr)
    assert error.startswith("TLS to Redis failed: Redis's certificate was not accepted")
    assert CA in error
    assert "self-signed certificate in certificate chain" in error


@pytest.mark.parametrize("presented", ["none", "signed-by-another-ca"])
async def test_a_server_requiring_client_certificates_refuses_a_client_without_a_good_one(
    tls_server: TlsServer, pki: Pki, serve: AppClient, presented: str
) -> None:
    server = tls_server(require_client_cert=True)
    files = {CA: pki.ca}
    if presented != "none":
        files |= {CERT: pki.stranger.cert, KEY: pki.stranger.key}
    env = env_for(server, **files)

    async with serve(build_app(load_settings(env))) as http:
        producer = Producer(http)
        status, reason = await producer.ready()
        assert status == 503
        assert reason is not None
        expected = "requires a client certificate" if presented == "none" else "refused our client"
        assert reason.startswith("TLS to Redis failed: Redis"), reason
        assert expected in reason
        assert await producer.post() == 503
    status, stderr = await worker_exit(await run_worker(env))
    assert status == 2
    error = misconfigured_error(stderr)
    if presented == "none":
        assert error.startswith("TLS to Redis failed: Redis requires a client certificate")
        assert CERT in error
    else:
        assert error.startswith("TLS to Redis failed: Redis refused our client certificate")


async def test_a_host_not_named_in_the_certificate_is_refused_unless_verify_is_ca(
    tls_server: TlsServer, pki: Pki, serve: AppClient
) -> None:
    server = tls_server(pki.server_elsewhere)
    full = load_settings(env_for(server, **{CA: pki.ca}))
    chain_only = load_settings(env_for(server, **{CA: pki.ca}, **{VERIFY: "ca"}))

    async with serve(build_app(full)) as http:
        status, reason = await Producer(http).ready()
        assert status == 503
        assert reason is not None
        assert "IP address mismatch" in reason
    async with serve(build_app(chain_only)) as http:
        assert await Producer(http).ready() == (200, None)


# --- settings: checked once, at start -----------------------------------------------------


async def test_a_tls_file_that_cannot_be_read_stops_the_worker_with_exit_2_naming_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "ca.pem"
    env = {"REDIS_URL": "rediss://127.0.0.1:6380/0", CA: str(missing)}

    status, stderr = await worker_exit(await run_worker(env))

    assert status == 2
    assert stderr.splitlines() == [
        f"ingest-worker: {CA}={str(missing)!r} cannot be read (No such file or directory)"
    ]


def test_a_tls_file_that_cannot_be_read_stops_the_producer_with_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://127.0.0.1:6380/0")
    monkeypatch.setenv(KEY, str(tmp_path))  # a directory

    with pytest.raises(SystemExit) as stopped:
        create_asgi_app()

    assert stopped.value.code == 2
    assert f"ingest-producer: {KEY}={str(tmp_path)!r} cannot be read" in capsys.readouterr().err


TLS_URL = "rediss://redis.example:6380/0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"REDIS_URL": "redis://redis.example:6379/0", CA: "ca"},
            f"{CA} is set but REDIS_URL does not start with rediss://",
            id="plain-url",
        ),
        pytest.param(
            {"REDIS_URL": TLS_URL + "?ssl_cert_reqs=none"},
            "not ssl_* query parameters",
            id="url-parameters",
        ),
        pytest.param({CA: "client.key"}, f"{CA}=", id="ca-not-a-certificate"),
        pytest.param({KEY: "client.key"}, f"{KEY} is set without {CERT}", id="key-alone"),
        pytest.param({CERT: "client.crt"}, f"or set {KEY}", id="certificate-without-key"),
        pytest.param(
            {CERT: "client.crt", KEY: "stranger.key"}, "KEY_VALUES_MISMATCH", id="foreign-key"
        ),
        pytest.param(
            {CERT: "client.crt", KEY: "encrypted.key"},
            "the private key is encrypted",
            id="encrypted-key",
        ),
        pytest.param({VERIFY: "yes"}, f"{VERIFY}='yes' must be one of full, ca, none", id="verify"),
        pytest.param({CA: "ca", VERIFY: "none"}, f"{VERIFY}=none would ignore it", id="ca-unused"),
    ],
)
def test_unusable_tls_settings_are_refused_at_start(
    pki: Pki, env: dict[str, str], message: str
) -> None:
    files = {
        "ca": pki.ca,
        "client.key": pki.client.key,
        "client.crt": pki.client.cert,
        "stranger.key": pki.stranger.key,
        "encrypted.key": pki.encrypted_key,
    }
    resolved = {name: str(files.get(value, value)) for name, value in env.items()}

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_settings({"REDIS_URL": TLS_URL} | resolved)


def test_a_certificate_and_key_in_one_file_are_accepted(pki: Pki) -> None:
    tls = load_settings({"REDIS_URL": TLS_URL, CERT: str(pki.combined)}).redis_tls

    assert (tls.cert_file, tls.key_file, tls.verify) == (str(pki.combined), None, "full")
