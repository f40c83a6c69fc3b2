"""API keys: write keys for the ingest routes, read keys (or write keys) for the query routes.

Keys are compared in constant time, as SHA-256 digests so every comparison has the same length,
and against every configured key, so timing tells nothing about which one nearly matched. A key
never appears in a log line or an error body; its short digest identifies the client instead
(for the rate limit).
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum
from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

ACCESS_OPT = "access"
ANONYMOUS = "anonymous"


class Access(Enum):
    """What a route needs; put it in the route's ``opt={"access": ...}``."""

    READ = "read"
    WRITE = "write"


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


def key_guard(ring: KeyRing) -> Any:
    """A Litestar guard enforcing each route's ``opt["access"]``; 401 or 403 otherwise.

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
        key = presented_key(connection.headers)
        if key is None:
            raise NotAuthorizedException(
                "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        access = ring.access_of(key)
        if access is None:
            raise NotAuthorizedException("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if needed is Access.WRITE and access is not Access.WRITE:
            raise PermissionDeniedException("this key may only read")
        connection.state.client_id = client_id(key)

    return guard
