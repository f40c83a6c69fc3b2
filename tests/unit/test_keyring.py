"""KeyRing and header parsing, without a server."""

from __future__ import annotations

import pytest

from ingest_producer.auth import Access, KeyRing, client_id, presented_key

WRITE = "w" * 20
READ = "r" * 20


def test_a_ring_without_keys_is_open() -> None:
    assert KeyRing([], []).open
    assert not KeyRing([WRITE], []).open


@pytest.mark.parametrize(
    ("key", "access"), [(WRITE, Access.WRITE), (READ, Access.READ), ("x" * 20, None), ("", None)]
)
def test_access_of_each_key(key: str, access: Access | None) -> None:
    assert KeyRing([WRITE], [READ]).access_of(key) is access


def test_a_key_in_both_lists_may_write() -> None:
    assert KeyRing([WRITE], [WRITE]).access_of(WRITE) is Access.WRITE


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": f"Bearer {WRITE}"}, WRITE),
        ({"authorization": f"bearer   {WRITE} "}, WRITE),
        ({"x-api-key": f" {READ} "}, READ),
        ({"authorization": f"Basic {WRITE}", "x-api-key": READ}, READ),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_client_id_is_stable_short_and_not_the_key() -> None:
    assert client_id(WRITE) == client_id(WRITE) != client_id(READ)
    assert len(client_id(WRITE)) == 16
    assert WRITE not in client_id(WRITE)
