"""Least-privilege Redis users: the commands each role needs, in one place.

The ``ACL SETUSER`` lines of docs/reliability-and-security.md, the compose ACL file and the
tests that run each service under its user are all made from :func:`acl_rules`, so they
cannot drift apart. Commands run inside the Redis Functions are checked against the caller's
ACL too, so they are listed.
On Redis 7.4 there is no TimeSeries ACL category and ``@write`` holds no ``TS.*`` command:
every command is named.
"""

from __future__ import annotations

import sys
from enum import Enum

# Every role: connecting (redis-py names itself with CLIENT SETINFO), health probes, and the
# stream layout check at start (a cluster client also asks for the slot table, and sends ASKING
# when a slot is being migrated).
_CONNECT = (
    "ping",
    "client|setinfo",
    "ts.info",
    "hsetnx",
    "hgetall",
    "cluster|slots",
    "asking",
    "command",
)
# Reads the producer's queries, the dashboard and the backlog monitor use.
_READ = (
    "xlen",
    "xinfo",
    "xpending",
    "xrange",
    "xrevrange",
    "smembers",
    "scard",
    "ts.get",
    "ts.mget",
    "ts.range",
    "ts.mrange",
)
# Loading the service's own library (delete: once, the single library of earlier releases).
_FUNCTIONS = ("fcall", "function|load", "function|delete")


class Role(Enum):
    """A service's Redis user."""

    PRODUCER = "producer"
    WORKER = "worker"
    DASHBOARD = "dashboard"


COMMANDS: dict[Role, tuple[str, ...]] = {
    Role.PRODUCER: (
        *_CONNECT,
        *_READ,
        *_FUNCTIONS,
        "xgroup|create",
        "waitaof",
        "wait",
        # Inside ingest_append: the events, idempotency records and rate counters.
        "xadd",
        "hmget",
        "hset",
        "get",
        "incrby",
        "pexpire",
        "pexpireat",
        "pexpiretime",
        "pttl",
        # Dead letters: replay (inside ingest_replay), delete, purge by age; and the process
        # route's consumer release (inside ingest_release_consumer).
        "xdel",
        "xtrim",
        "xgroup|delconsumer",
        # The cardinality registry: admitting new series (inside ingest_admit) and seeding it
        # with the series that exist at start.
        "sismember",
        "sadd",
        "exists",
        "ts.queryindex",
        "sunionstore",
        "set",
    ),
    Role.WORKER: (
        *_CONNECT,
        *_FUNCTIONS,
        "xreadgroup",
        "xack",
        "xautoclaim",
        "xpending",
        "xgroup|create",
        "xadd",
        "sadd",
        "ts.madd",
        "ts.add",
        "ts.create",
        "ts.createrule",
        # Inside ingest_trim.
        "xlen",
        "xinfo",
        "xrevrange",
        "xtrim",
        # Sharing shards: heartbeats, leases (inside ingest_lease), consumer cleanup.
        "zadd",
        "zrange",
        "zremrangebyscore",
        "zrem",
        "set",
        "get",
        "pexpire",
        "del",
        "xgroup|delconsumer",
    ),
    Role.DASHBOARD: (*_CONNECT, *_READ),
}

DEFAULT_USERS = {
    Role.PRODUCER: "ingest-producer",
    Role.WORKER: "ingest-worker",
    Role.DASHBOARD: "ingest-dashboard",
}


def acl_rules(role: Role, key_prefix: str) -> str:
    """The rules after the user name and password: keys under ``key_prefix``, no channels,
    nothing but the role's commands. (The dashboard's key pattern is not read-only ``%R~``:
    TimeSeries commands declare no read/write key flags, so Redis refuses them under ``%R``;
    its commands are all reads.)"""
    commands = " ".join(f"+{command}" for command in COMMANDS[role])
    return f"resetkeys ~{key_prefix}* resetchannels -@all {commands}"


def setuser_command(role: Role, password: str, key_prefix: str, user: str | None = None) -> str:
    """``ACL SETUSER <user> on ><password> <rules>`` for ``role``."""
    name = user or DEFAULT_USERS[role]
    return f"ACL SETUSER {name} reset on >{password} {acl_rules(role, key_prefix)}"


def acl_file_line(role: Role, password: str, key_prefix: str, user: str | None = None) -> str:
    """The same user as a line of a Redis ACL file (``aclfile``)."""
    name = user or DEFAULT_USERS[role]
    return f"user {name} on >{password} {acl_rules(role, key_prefix)}"


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest_shared.acl <producer|worker|dashboard> <password> [key prefix]``:
    print the ``ACL SETUSER`` line for a role."""
    args = sys.argv[1:] if argv is None else argv
    roles = {role.value: role for role in Role}
    if len(args) not in (2, 3) or args[0] not in roles:
        print(f"usage: python -m ingest_shared.acl {{{'|'.join(roles)}}} PASSWORD [KEY_PREFIX]")
        return 2
    prefix = args[2] if len(args) == 3 else "telemetry:"
    print(setuser_command(roles[args[0]], args[1], prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
