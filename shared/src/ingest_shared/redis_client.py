"""The Redis client factory: one place that sets timeouts, retry behaviour, TLS and the choice
between a single node and a Redis Cluster (``RedisClient`` is either client)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

from redis._parsers.hiredis import _AsyncHiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from ingest_shared.exceptions import ReplyTooLargeError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis.typing import EncodableT

# A single node or a cluster: everything that talks to Redis takes either.
RedisClient: TypeAlias = "Redis | RedisCluster"
# MOVED/ASK answers followed by call_packed before giving up (redis-py's own bound is 16).
MAX_REDIRECTS = 5

# full: the chain and the host name in REDIS_URL; ca: the chain only; none: encryption only.
TlsVerify: TypeAlias = Literal["full", "ca", "none"]
# OpenSSL reasons that no retry can cure: the deployment's certificates, CA or port are wrong.
# The rest (EOF, syscall errors) are a connection cut mid-handshake: transient.
_TLS_MISCONFIGURED = (
    "CERTIFICATE",  # verify failed, certificate required/expired/revoked/unknown, bad one
    "UNKNOWN_CA",
    "ACCESS_DENIED",
    "WRONG_VERSION_NUMBER",  # rediss:// to a port that does not speak TLS
    "HANDSHAKE_FAILURE",
    "PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
)
# How long a second handshake listens for the server's verdict on our certificate (one round
# trip after the handshake; only spent when a connection died right after its handshake).
TLS_VERDICT_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class RedisTls:
    """TLS options for ``rediss://`` URLs (``INGEST_REDIS_TLS_*``); the defaults verify the
    server against the system's CAs, as redis-py does on its own.

    The files are read again for every connect (see ``_TlsConnection``), so certificates
    renewed in place are used from the next connection on, without a restart.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: TlsVerify = "full"

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py's ``ssl_*`` connection arguments (sync and asyncio clients alike)."""
        return {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_cert_reqs": "none" if self.verify == "none" else "required",
            "ssl_check_hostname": self.verify == "full",
        }


@overload
def create_redis(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float = ...,
    max_connections: int = ...,
    tls: RedisTls | None = ...,
    cluster: Literal[False] = ...,
    max_reply_bytes: int | None = ...,
) -> Redis: ...


@overload
def create_redis(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float = ...,
    max_connections: int = ...,
    tls: RedisTls | None = ...,
    cluster: bool,
    max_reply_bytes: int | None = ...,
) -> RedisClient: ...


def create_redis(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float = 1.0,
    max_connections: int = 256,
    tls: RedisTls | None = None,
    cluster: bool = False,
    max_reply_bytes: int | None = None,
) -> RedisClient:
    """A bytes-replying asyncio client; the caller owns it and must ``aclose()`` it.

    No hidden retries: the callers decide (the producer answers 503 at once, the worker backs
    off and keeps its batch pending), so a dead Redis never turns into a hang.
    ``socket_timeout`` must exceed any ``BLOCK`` time used on the client. ``tls`` applies to
    ``rediss://`` URLs only (the settings refuse TLS files with any other scheme). With
    ``cluster``, a RedisCluster from any node's URL: it still follows MOVED/ASK (a routing
    answer), but retries nothing else, and never closes every connection on a MOVED storm.
    ``max_reply_bytes``: a reply longer than that is not read into memory: its connection is
    closed and the command raises ReplyTooLargeError (needs hiredis; see
    :func:`has_reply_bound`).
    """
    parser = bounded_parser(max_reply_bytes) if max_reply_bytes else None
    tls_kwargs = (tls or RedisTls()).redis_kwargs() if url.startswith("rediss://") else {}
    if cluster:
        cluster_client = RedisCluster.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,  # per node
            health_check_interval=0,
            reinitialize_steps=0,
            **tls_kwargs,
        )
        # The nodes' connections are made from these arguments at initialize().
        if tls_kwargs:
            cluster_client.connection_kwargs["connection_class"] = _TlsConnection
        if parser is not None:
            cluster_client.connection_kwargs["parser_class"] = parser
        return cluster_client
    client = Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        max_connections=max_connections,
        health_check_interval=0,
        **tls_kwargs,
    )
    # Set before the pool made any connection (from_url would override the arguments).
    if tls_kwargs:
        client.connection_pool.connection_class = _TlsConnection
    if parser is not None:
        client.connection_pool.connection_kwargs["parser_class"] = parser
    return client


class _BoundedReplyParser(_AsyncHiredisParser):
    """hiredis, refusing a reply once more than ``max_reply_bytes`` of it arrived.

    Counted as the bytes come off the socket, before hiredis builds any object, so a reply
    never costs more than the budget (plus one socket read). Raising closes the connection
    (redis-py disconnects on any error while reading), which discards the rest unread.
    """

    max_reply_bytes = 0
    __slots__ = ("_received",)

    async def read_response(
        self, disable_decoding: bool = False, push_request: bool = False
    ) -> Any:
        self._received = 0
        return await super().read_response(disable_decoding, push_request)

    async def read_from_socket(self) -> bool:
        assert self._stream is not None
        assert self._reader is not None
        buffer = await self._stream.read(self._read_size)
        if not buffer or not isinstance(buffer, bytes):
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR) from None
        self._received += len(buffer)
        if self._received > self.max_reply_bytes:
            msg = f"a reply passed {self.max_reply_bytes} bytes: connection closed unread"
            raise ReplyTooLargeError(msg)
        self._reader.feed(buffer)
        return True


def bounded_parser(max_reply_bytes: int) -> type[_AsyncHiredisParser] | None:
    """The parser class for a client with this reply budget; None without hiredis."""
    if not HIREDIS_AVAILABLE:
        return None
    return type("BoundedReplyParser", (_BoundedReplyParser,), {"max_reply_bytes": max_reply_bytes})


def has_reply_bound(redis: RedisClient) -> bool:
    """``redis`` was created with a ``max_reply_bytes`` it can enforce."""
    kwargs = (
        redis.connection_kwargs
        if isinstance(redis, RedisCluster)
        else redis.connection_pool.connection_kwargs
    )
    parser = kwargs.get("parser_class")
    return isinstance(parser, type) and issubclass(parser, _BoundedReplyParser)


class _TlsConnection(SSLConnection):
    """redis-py's TLS connection, except that a refused client certificate is reported as such.

    With TLS 1.3 the server judges our certificate after the handshake; its alert races our
    first command, and the server's close then often arrives as a bare "connection reset".
    A second handshake that sends nothing receives the alert itself.
    """

    def _connection_arguments(self) -> Mapping[str, Any]:
        # redis-py builds the context once per pooled connection object, which outlives
        # reconnects: rebuild it, so renewed certificate files are read.
        self.ssl_context.context = None
        arguments: Mapping[str, Any] = super()._connection_arguments()
        return arguments

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        try:
            await super().on_connect_check_health(check_health)
        except RedisConnectionError as exc:
            if not _cut_off(exc) or (alert := await self._verdict()) is None:
                raise
            msg = f"Error connecting to {self._host_error()}: TLS refused ({alert.args[-1]})"
            raise RedisConnectionError(msg) from alert

    async def _verdict(self) -> ssl.SSLError | None:
        """The TLS alert a fresh connection receives when it sends nothing, if any."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl_context.get()),
                self.socket_connect_timeout,
            )
        except (OSError, TimeoutError):
            return None
        try:
            await asyncio.wait_for(reader.read(1), TLS_VERDICT_WAIT_S)
        except ssl.SSLError as exc:
            return exc
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return None


def _cut_off(error: BaseException) -> bool:
    """True if the server reset the connection under ``error`` (and no TLS reason came)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return False
        if isinstance(seen, ConnectionResetError | BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def tls_failure(error: BaseException) -> str | None:
    """Why the TLS handshake behind ``error`` was refused, if it was and no retry can help.

    redis-py wraps the ``ssl.SSLError`` in its ConnectionError (as the implicit context, so the
    chain is walked); a server refusing our certificate shows up on the first read, not the
    connect, with TLS 1.3.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            reason = seen.reason or ""
            if not any(part in reason for part in _TLS_MISCONFIGURED):
                return None
            detail = getattr(seen, "verify_message", None) or seen.args[-1]
            return f"{_tls_hint(reason)} ({detail})"
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_hint(reason: str) -> str:
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return (
            "Redis's certificate was not accepted: INGEST_REDIS_TLS_CA_FILE must name the CA "
            "that signed it and REDIS_URL's host must be a name in it "
            "(INGEST_REDIS_TLS_VERIFY=ca skips the name)"
        )
    if "CERTIFICATE_REQUIRED" in reason:
        return (
            "Redis requires a client certificate: set INGEST_REDIS_TLS_CERT_FILE and "
            "INGEST_REDIS_TLS_KEY_FILE"
        )
    if "ALERT" in reason and any(p in reason for p in ("CERTIFICATE", "UNKNOWN_CA", "DENIED")):
        return "Redis refused our client certificate (INGEST_REDIS_TLS_CERT_FILE)"
    if reason == "WRONG_VERSION_NUMBER":
        return "Redis does not speak TLS on this port: use redis:// or its TLS port"
    return "the TLS handshake with Redis failed"


async def call(redis: RedisClient, *args: EncodableT) -> Any:
    """``execute_command`` with typed arguments (redis-py leaves it untyped)."""
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


async def call_at(redis: RedisClient, key: str | bytes, *args: EncodableT) -> Any:
    """``execute_command`` sent to the node that owns ``key`` (a cluster client otherwise asks
    the server for the keys of FCALL/XREADGROUP first: two more round trips per call)."""
    if isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(key.decode() if isinstance(key, bytes) else key)
        return await redis.execute_command(*args, target_nodes=node)
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def pack(*args: bytes) -> bytes:
    """One command in RESP, for :func:`call_packed`: linear in its size, unlike redis-py's
    ``pack_command``, which re-copies a growing buffer for every argument of a long command.
    """
    parts = [b"*%d\r\n" % len(args)]
    parts += [bulk(arg) for arg in args]
    return b"".join(parts)


async def call_packed(redis: RedisClient, command: bytes, key: bytes = b"") -> Any:
    """Send one command already encoded in RESP and return its unparsed reply.

    For commands with thousands of arguments (see :func:`pack` and ``timeseries.madd_command``).
    Like ``execute_command`` without retries or a response callback: an error reply raises
    ResponseError, per-element errors stay in the reply, and a connection that fails or is
    cancelled mid-command is disconnected by redis-py before it returns to the pool. On a
    cluster it goes to the node that owns ``key`` (every key of the command shares its slot).
    """
    if isinstance(redis, RedisCluster):
        return await _call_packed_on_cluster(redis, command, key)
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(command)
        return await connection.read_response()
    finally:
        await pool.release(connection)


async def _call_packed_on_cluster(cluster: RedisCluster, command: bytes, key: bytes) -> Any:
    """call_packed on the node owning ``key``, following MOVED (the table is fixed) and ASK."""
    node: ClusterNode | None = cluster.get_node_from_key(key)  # type: ignore[arg-type]
    asking = False
    for _ in range(MAX_REDIRECTS):
        if node is None:
            await cluster.nodes_manager.initialize()
            node = cluster.get_node_from_key(key)  # type: ignore[arg-type]
            continue
        owner, connection = node, node.acquire_connection()
        try:
            # ASKING covers only the next command on the same connection: send both at once.
            await connection.send_packed_command(pack(b"ASKING") + command if asking else command)
            if asking:
                await connection.read_response()
            return await connection.read_response()
        except MovedError as exc:  # before AskError: MovedError subclasses it
            await cluster.nodes_manager.move_slot(exc)
            node, asking = cluster.nodes_manager.get_node_from_slot(exc.slot_id), False
        except AskError as exc:
            node, asking = cluster.get_node(host=exc.host, port=exc.port) or node, True
        except (RedisConnectionError, RedisTimeoutError):
            # The node may be gone (a failover): read the slot table again for the next try.
            await cluster.nodes_manager.initialize()
            raise
        finally:
            owner.release(connection)
    msg = f"still redirected after {MAX_REDIRECTS} tries"
    raise RedisError(msg)


async def pipeline_at(
    redis: RedisClient, key: str, commands: Sequence[Sequence[EncodableT]]
) -> list[Any]:
    """``commands`` in order on ONE connection to the node that owns ``key``, in one round
    trip; the replies, errors in place. For a write and the keyless ``WAIT``/``WAITAOF`` that
    must confirm it: sent through a cluster client unpinned, the wait goes to another node and
    confirms nothing. Every keyed command must be in ``key``'s slot.

    On a cluster nothing is redirected: a MOVED reply means that command did not run there,
    and what followed it on that connection confirms nothing. The slot table is then fixed and
    the whole pipeline sent once more, to the new owner.
    """
    if not isinstance(redis, RedisCluster):
        pipe = redis.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return await pipe.execute(raise_on_error=False)
    replies = await _pinned_pipeline(redis, key, commands)
    moved = next((reply for reply in replies if isinstance(reply, MovedError)), None)
    if moved is None:
        return replies
    await redis.nodes_manager.move_slot(moved)
    return await _pinned_pipeline(redis, key, commands)


async def _pinned_pipeline(
    cluster: RedisCluster, key: str, commands: Sequence[Sequence[EncodableT]]
) -> list[Any]:
    node = cluster.get_node_from_key(key)
    pipe = cluster.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args, target_nodes=node)
    try:
        return await pipe.execute(raise_on_error=False, allow_redirections=False)
    except (RedisConnectionError, RedisTimeoutError):
        # The node may be gone (a failover): read the slot table again for the next call, and
        # report the original error (it tells whether anything was sent).
        with contextlib.suppress(RedisError, OSError):
            await cluster.nodes_manager.initialize()
        raise


async def each_primary(redis: RedisClient, commands: Sequence[Sequence[EncodableT]]) -> list[Any]:
    """Run every (keyless) command on every primary: a single node answers once. One round trip
    per node; the replies per node, each a list of the commands' replies, in order."""
    if isinstance(redis, RedisCluster):
        # A client that has sent nothing yet knows no node: get_primaries() would be empty,
        # and the commands would silently go nowhere. A no-op once initialized.
        await redis.initialize()
        nodes = redis.get_primaries()
        cluster_pipe = redis.pipeline(transaction=False)
        for node in nodes:
            for args in commands:
                cluster_pipe.execute_command(*args, target_nodes=node)
        flat = await cluster_pipe.execute(raise_on_error=True)
        width = len(commands)
        return [flat[index * width : (index + 1) * width] for index in range(len(nodes))]
    pipe = redis.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return [await pipe.execute(raise_on_error=True)]


async def is_cluster(url: str, *, connect_timeout: float, tls: RedisTls | None = None) -> bool:
    """``INFO cluster`` (or, if the user may not run INFO, ``CLUSTER SLOTS``) says ``url`` is
    a cluster node; raises if it cannot be asked."""
    tls_kwargs = (tls or RedisTls()).redis_kwargs() if url.startswith("rediss://") else {}
    async with Redis.from_url(
        url,
        socket_timeout=connect_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        **tls_kwargs,
    ) as probe:
        try:
            info = await probe.info("cluster")
        except NoPermissionError:
            # A least-privilege user may not run INFO; it may run CLUSTER SLOTS (the cluster
            # client needs it), which a single node refuses as disabled.
            try:
                await call(probe, "CLUSTER", "SLOTS")
            except ResponseError as exc:
                if cluster_disabled(exc):
                    return False
                raise
            return True
    return bool(info.get("cluster_enabled"))


def cluster_disabled(error: ResponseError) -> bool:
    """``error`` is a single node's answer to a CLUSTER command."""
    return "cluster support disabled" in str(error)
