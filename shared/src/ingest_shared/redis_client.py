"""The Redis client factory: one place that sets timeouts and retry behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

if TYPE_CHECKING:
    from redis.typing import EncodableT


def create_redis(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float = 1.0,
    max_connections: int = 256,
) -> Redis:
    """A bytes-replying asyncio client; the caller owns it and must ``aclose()`` it.

    No hidden retries: the callers decide (the producer answers 503 at once, the worker backs
    off and keeps its batch pending), so a dead Redis never turns into a hang.
    ``socket_timeout`` must exceed any ``BLOCK`` time used on the client.
    """
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        max_connections=max_connections,
        health_check_interval=0,
    )


async def call(redis: Redis, *args: EncodableT) -> Any:
    """``execute_command`` with typed arguments (redis-py leaves it untyped)."""
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


async def call_packed(redis: Redis, command: bytes) -> Any:
    """Send one command already encoded in RESP and return its unparsed reply.

    For commands with thousands of arguments (see :func:`pack` and ``timeseries.madd_command``).
    Like ``execute_command`` without retries or a response callback: an error reply raises
    ResponseError, per-element errors stay in the reply, and a connection that fails or is
    cancelled mid-command is disconnected by redis-py before it returns to the pool.
    """
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(command)
        return await connection.read_response()
    finally:
        await pool.release(connection)
