"""API keys: write keys for the ingest routes, read keys (or write keys) for the query routes.

Keys are compared in constant time, as SHA-256 digests so every comparison has the same length,
and against every configured key, so timing tells nothing about which one nearly matched. A key
never appears in a log line or an error body; its short digest identifies the client instead
(for the rate limit).

The agent protocol routes (InfluxDB, Prometheus remote-write, OTLP) also take the key the way
those agents send a secret: ``Authorization: Token <key>`` (InfluxDB 2), ``Authorization:
Basic`` with the key as the password (or as the user name when the password is empty), and,
on InfluxDB 1.x routes, the ``u``/``p`` query parameters. A route asks for that with
``opt={CREDENTIALS_OPT: Credentials.AGENT}`` (or ``AGENT_V1``); every other route reads only
``Authorization: Bearer`` and ``X-API-Key``, as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from enum import Enum
from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

ACCESS_OPT = "access"
CREDENTIALS_OPT = "credentials"
ANONYMOUS = "anonymous"
_KEY_REQUIRED = "an API key is required (Authorization: Bearer <key> or X-API-Key)"
_AGENT_KEY_REQUIRED = (
    "an API key is required (Authorization: Token <key>, Bearer <key>, Basic with the key as "
    "password, or X-API-Key)"
)
_AGENT_V1_KEY_REQUIRED = _AGENT_KEY_REQUIRED.removesuffix(")") + ", or the p query parameter)"


class Access(Enum):
    """What a route needs; put it in the route's ``opt={"access": ...}``."""

    READ = "read"
    WRITE = "write"


class Credentials(Enum):
    """Where a route also looks for the key; put it in the route's ``opt={"credentials": ...}``.

    AGENT: also ``Authorization: Token`` and ``Basic``; AGENT_V1: those and ``u``/``p``.
    """

    AGENT = "agent"
    AGENT_V1 = "agent_v1"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys; open (everything allowed) when no key at all is configured."""

    def __init__(self, write_keys: Iterable[str], read_keys: Iterable[str]) -> None:
        self._write = [_digest(key) for key in write_keys]
        self._read = [_digest(key) for key in read_keys]

    @property
    def open(self) -> bool:
        """True when no key is configured: every route is open."""
        return not self._write and not self._read

    def access_of(self, key: str) -> Access | None:
        """What ``key`` may do, or None for an unknown key; constant time in the key."""
        digest = _digest(key)
        is_write = False
        is_read = False
        for known in self._write:
            is_write |= hmac.compare_digest(known, digest)
        for known in self._read:
            is_read |= hmac.compare_digest(known, digest)
        if is_write:
            return Access.WRITE
        return Access.READ if is_read else None


def client_id(key: str) -> str:
    """A short, non-secret name for the holder of ``key`` (rate-limit buckets, logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def presented_key(headers: Any) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    authorization: str | None = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return str(token.strip())
    key: str | None = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def agent_key(headers: Any, query: Mapping[str, str] | None = None) -> str | None:
    """The key as an agent sends it: what :func:`presented_key` reads, else ``Authorization:
    Token <key>`` or ``Basic`` (the password; the user name when the password is empty), else
    (``query`` given: InfluxDB 1.x) the ``p`` query parameter (``u`` when ``p`` is empty)."""
    key = presented_key(headers)
    if key is not None:
        return key
    authorization: str | None = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme == "token" and token:
            return token
        if scheme == "basic" and token:
            return _basic_key(token)
    if query is not None:
        for name in ("p", "u"):
            value = (query.get(name) or "").strip()
            if value:
                return value
    return None


def _basic_key(token: str) -> str | None:
    """The key in Basic credentials; None when they are not base64 of ``user:password``."""
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    key = password.strip() or user.strip()
    return key or None


def _caller_key(
    connection: ASGIConnection[Any, Any, Any, Any], credentials: Credentials | None
) -> tuple[str | None, str]:
    """The key the caller presented on a route reading ``credentials``, and what a 401 says."""
    if credentials is None:
        return presented_key(connection.headers), _KEY_REQUIRED
    if credentials is Credentials.AGENT:
        return agent_key(connection.headers), _AGENT_KEY_REQUIRED
    return agent_key(connection.headers, connection.query_params), _AGENT_V1_KEY_REQUIRED


def key_guard(ring: KeyRing) -> Any:
    """A Litestar guard enforcing each route's ``opt["access"]``; 401 or 403 otherwise.

    The key is read where the route's ``opt["credentials"]`` says (headers only by default).

    Stores the caller's :func:`client_id` in ``connection.state.client_id``.
    """

    # async: Litestar runs a sync guard in a thread pool, a third of a small request's cost.
    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        needed = handler.opt.get(ACCESS_OPT)
        if needed is None or ring.open:
            connection.state.client_id = ANONYMOUS
            return
        key, required = _caller_key(connection, handler.opt.get(CREDENTIALS_OPT))
        if key is None:
            raise NotAuthorizedException(required, headers={"WWW-Authenticate": "Bearer"})
        access = ring.access_of(key)
        if access is None:
            raise NotAuthorizedException("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if needed is Access.WRITE and access is not Access.WRITE:
            raise PermissionDeniedException("this key may only read")
        connection.state.client_id = client_id(key)

    return guard
