"""A local Redis Cluster of the embedded Redis Stack binary, for tests and development.

Every node is a :class:`~ingest_devtools.localredis.LocalRedis` (TimeSeries loaded, AOF on,
so ``WAITAOF`` works) started with ``--cluster-enabled yes`` on free loopback ports; the
cluster is then formed with ``redis-cli --cluster create``. Use :class:`LocalCluster` as a
context manager, or run it in the foreground::

    python -m ingest_devtools.localcluster --masters 3 --replicas 1 --dir .run/cluster

Each start forms a new cluster: the ``node-*`` folders left under the data directory by a
previous run are removed first (their ``nodes.conf`` name ports picked for that run).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from ingest_devtools.localredis import (
    HOST,
    LocalRedis,
    LocalRedisError,
    _free_port,
    cli_binary,
    server_env,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = ["LocalCluster", "LocalClusterError", "NodeInfo"]

logger = logging.getLogger(__name__)

SLOTS = 16384
CREATE_TIMEOUT_SECONDS = 60.0
READY_TIMEOUT_SECONDS = 30.0
QUERY_TIMEOUT_SECONDS = 1.0
POLL_SECONDS = 0.1

Role = Literal["primary", "replica"]
SlotRange = tuple[int, int]


class LocalClusterError(LocalRedisError):
    """The local cluster could not be started, formed or queried."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the cluster sees it (``CLUSTER NODES``), plus our process id for it.

    ``pid`` is None while the process is not running (killed). ``failed`` is set while the
    other nodes flag it ``fail`` or ``fail?``. ``slots`` are inclusive ranges.
    """

    port: int
    pid: int | None
    role: Role
    node_id: str
    slots: tuple[SlotRange, ...]
    replica_of: int | None
    failed: bool

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


class LocalCluster:
    """``masters * (1 + replicas_per_master)`` redis-server processes formed into a cluster.

    Entering the context starts the nodes, forms the cluster and waits until every node says
    ``cluster_state:ok`` with all 16384 slots covered; leaving it stops every process (also
    on failure, and at interpreter exit if the caller never stopped it). :meth:`kill`,
    :meth:`pause`/:meth:`resume` and :meth:`start` inject faults by port.
    """

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas_per_master: int = 0,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        *,
        base_port: int | None = None,
    ) -> None:
        if masters < 3:
            # redis-cli --cluster create refuses fewer than three masters.
            raise ValueError("a Redis Cluster needs at least 3 masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        self.data_dir = Path(data_dir).resolve()
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.base_port = base_port
        self._servers: dict[int, LocalRedis] = {}
        self._paused: set[int] = set()

    # --- addresses and topology ---------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's client port, in start order (the first ``masters`` were created as
        primaries)."""
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self._servers.values()]

    @property
    def url(self) -> str:
        """One running node's URL: enough for a cluster client to discover the rest."""
        return f"redis://{HOST}:{self._live_ports()[0]}/0"

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node, as seen by a running node (sorted by port)."""
        return self._view(self._live_ports()[0])

    def primary_for_slot(self, slot: int) -> int:
        """The port of the primary serving ``slot`` now (a primary not flagged as failed)."""
        for node in self.nodes:
            serves = any(low <= slot <= high for low, high in node.slots)
            if serves and node.role == "primary" and not node.failed:
                return node.port
        raise LocalClusterError(f"no live primary serves slot {slot}")

    def log_tail(self, port: int, lines: int = 20) -> str:
        return self._server(port).log_tail(lines)

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start_cluster()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start_cluster(self) -> Self:
        """Start every node, form the cluster and wait until it is ok; on any failure, every
        process started so far is stopped before the error propagates."""
        if self._servers:
            raise LocalClusterError("the cluster is already started")
        atexit.register(self.stop)
        try:
            self._start_nodes()
            self._create()
            self.wait_ok(READY_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        logger.debug("cluster ready: %s", " ".join(self.urls))
        return self

    def stop(self) -> None:
        """Stop every node (paused ones are resumed first, so they can take SIGTERM).

        Safe to call more than once; the cluster's files stay in ``data_dir``.
        """
        atexit.unregister(self.stop)
        for port in list(self._paused):
            with contextlib.suppress(LocalClusterError):
                self.resume(port)
        errors: list[BaseException] = []
        for server in self._servers.values():
            try:
                server.stop()
            except Exception as exc:  # stop the others anyway, report the first
                errors.append(exc)
        if errors:
            raise errors[0]

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: nothing flushed beyond what the AOF already has)."""
        self._server(port).kill()
        self._paused.discard(port)

    def pause(self, port: int) -> None:
        """SIGSTOP one node: its sockets stay open but nothing answers, like a hung host."""
        os.kill(self._pid(port), signal.SIGSTOP)
        self._paused.add(port)

    def resume(self, port: int) -> None:
        """SIGCONT a node paused by :meth:`pause`."""
        os.kill(self._pid(port), signal.SIGCONT)
        self._paused.discard(port)

    def start(self, port: int) -> None:
        """Restart a killed node with its own configuration and ``nodes.conf``: it rejoins the
        cluster (as a replica if it was a primary that has been failed over)."""
        self._server(port).start()

    def running(self, port: int) -> bool:
        return self._server(port).running

    def wait_ok(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Wait until every running, unpaused node says ``cluster_state:ok``, sees all 16384
        slots served, knows every node and agrees with the others on who serves which slots,
        and every replica's link to its primary is up. Raises LocalClusterError on timeout.
        """
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while True:
            problem = self._not_ok() or ""
            if not problem:
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"cluster not ok within {timeout:.0f}s: {problem}\n{self._log_tails()}"
                )
            time.sleep(POLL_SECONDS)

    # --- internals ----------------------------------------------------------------------

    def _server(self, port: int) -> LocalRedis:
        try:
            return self._servers[port]
        except KeyError:
            raise LocalClusterError(f"no node of this cluster listens on {port}") from None

    def _pid(self, port: int) -> int:
        pid = self._server(port).pid
        if pid is None:
            raise LocalClusterError(f"node {port} is not running")
        return pid

    def _live_ports(self) -> list[int]:
        live = [p for p, s in self._servers.items() if s.running and p not in self._paused]
        if not live:
            raise LocalClusterError("no node of the cluster is running")
        return live

    def _pick_ports(self, count: int) -> list[int]:
        """``count`` client ports, then ``count`` cluster-bus ports, all distinct."""
        if self.base_port is not None:
            client = list(range(self.base_port, self.base_port + count))
            picked = set(client)
            bus: list[int] = []
            while len(bus) < count:
                if (port := _free_port()) not in picked:
                    picked.add(port)
                    bus.append(port)
            return client + bus
        ports: list[int] = []
        while len(ports) < 2 * count:
            if (port := _free_port()) not in ports:
                ports.append(port)
        return ports

    def _start_nodes(self) -> None:
        count = self.masters * (1 + self.replicas_per_master)
        ports = self._pick_ports(count)
        for old in self.data_dir.glob("node-*"):
            shutil.rmtree(old, ignore_errors=True)
        # The bus port is picked too: the default (port + 10000) overflows for ports > 55535.
        for port, bus_port in zip(ports[:count], ports[count:], strict=True):
            node_dir = self.data_dir / f"node-{port}"
            server = LocalRedis(
                node_dir,
                port=port,
                appendonly=True,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-port", str(bus_port),
                    *self.extra_args,
                ],
            )  # fmt: skip
            self._servers[port] = server
            server.start()

    def _create(self) -> None:
        command = [
            str(cli_binary()),
            "--cluster", "create",
            *(f"{HOST}:{port}" for port in self._servers),
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                command,
                env=server_env(),
                capture_output=True,
                text=True,
                timeout=CREATE_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalClusterError(
                f"redis-cli --cluster create did not finish within {CREATE_TIMEOUT_SECONDS:.0f}s"
            ) from exc
        output = (proc.stdout + proc.stderr).strip()
        # redis-cli exits 0 on some failures; its success line is the reliable signal.
        if proc.returncode != 0 or "[OK] All 16384 slots covered" not in output:
            raise LocalClusterError(
                f"redis-cli --cluster create failed (exit {proc.returncode})\n{output[-2000:]}"
            )

    def _view(self, port: int) -> list[NodeInfo]:
        lines = _cluster_nodes(port)
        port_of = {line.node_id: line.port for line in lines}
        return sorted(
            (
                NodeInfo(
                    port=line.port,
                    pid=self._servers[line.port].pid if line.port in self._servers else None,
                    role="replica" if "slave" in line.flags else "primary",
                    node_id=line.node_id,
                    slots=line.slots,
                    replica_of=port_of.get(line.master_id),
                    failed=bool({"fail", "fail?"} & line.flags),
                )
                for line in lines
            ),
            key=lambda node: node.port,
        )

    def _not_ok(self) -> str | None:
        """Why the cluster is not ok yet, or None if it is."""
        layouts: set[frozenset[tuple[int, tuple[SlotRange, ...]]]] = set()
        for port in self._live_ports():
            try:
                problem, lines = self._node_problem(port)
            except (OSError, LocalClusterError) as exc:
                return f"node {port}: {exc}"
            if problem:
                return f"node {port}: {problem}"
            layouts.add(
                frozenset(
                    (line.port, line.slots)
                    for line in lines
                    if "master" in line.flags and line.slots and not {"fail", "fail?"} & line.flags
                )
            )
        return "nodes disagree on who serves which slots" if len(layouts) > 1 else None

    def _node_problem(self, port: int) -> tuple[str | None, list[_NodeLine]]:
        info = _fields(_query(port, "CLUSTER", "INFO"))
        expected = {
            "cluster_state": "ok",
            "cluster_slots_ok": str(SLOTS),
            "cluster_known_nodes": str(len(self._servers)),
        }
        for key, value in expected.items():
            if info.get(key) != value:
                return f"{key} {info.get(key)}", []
        lines = _cluster_nodes(port)
        if any({"myself", "slave"} <= line.flags for line in lines):
            link = _fields(_query(port, "INFO", "replication")).get("master_link_status")
            if link != "up":
                return f"master_link_status {link}", lines
        return None, lines

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- node {port} ---\n{server.log_tail(10)}" for port, server in self._servers.items()
        )


@dataclass(frozen=True, slots=True)
class _NodeLine:
    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str
    slots: tuple[SlotRange, ...]


def _cluster_nodes(port: int) -> list[_NodeLine]:
    """``CLUSTER NODES`` of one node, parsed."""
    parsed = []
    for line in _query(port, "CLUSTER", "NODES").splitlines():
        # <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        fields = line.split()
        if len(fields) < 8:
            continue
        slots = []
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being imported or migrated
                continue
            low, _, high = spec.partition("-")
            slots.append((int(low), int(high or low)))
        parsed.append(
            _NodeLine(
                node_id=fields[0],
                port=int(fields[1].split("@", 1)[0].rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=fields[3],
                slots=tuple(slots),
            )
        )
    return parsed


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines of CLUSTER INFO / INFO into a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _query(port: int, *args: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> str:
    """One command to one node over a fresh socket; its status, integer or bulk reply as text.

    A raw socket rather than redis-py: the answers are needed from every single node, and a
    paused or dying node must cost at most ``timeout``.
    """
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%b\r\n" % (len(arg.encode()), arg.encode()) for arg in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        buffer = b""
        while (reply := _parse_reply(buffer)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise LocalClusterError(f"node {port} closed the connection")
            buffer += chunk
    if isinstance(reply, LocalClusterError):
        raise reply
    return reply


def _parse_reply(buffer: bytes) -> str | LocalClusterError | None:
    """A complete simple/error/integer/bulk reply, or None if more bytes are needed."""
    header_end = buffer.find(b"\r\n")
    if header_end < 0:
        return None
    kind, header = buffer[:1], buffer[1:header_end].decode()
    if kind == b"$":
        start, size = header_end + 2, int(header)
        if size >= 0 and len(buffer) < start + size + 2:
            return None
        return buffer[start : start + max(size, 0)].decode(errors="replace")
    if kind in (b"+", b":"):
        return header
    return LocalClusterError(header if kind == b"-" else f"unexpected reply {buffer[:40]!r}")


# --- foreground CLI ---------------------------------------------------------------------


def describe(node: NodeInfo) -> str:
    """One line per node for people: URL, role, slots or primary, state."""
    if node.role == "primary":
        what = "primary, slots " + (
            ",".join(f"{low}-{high}" for low, high in node.slots) if node.slots else "none"
        )
    else:
        what = f"replica of {node.replica_of}"
    state = " (failed)" if node.failed else "" if node.pid else " (not running)"
    return f"  {node.url}  {what}{state}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a local Redis Cluster in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest_devtools.localcluster", description=main.__doc__
    )
    parser.add_argument("--masters", type=int, default=3, help="primaries (at least 3)")
    parser.add_argument("--replicas", type=int, default=0, help="replicas per primary")
    parser.add_argument("--dir", type=Path, default=Path(".run/cluster"), help="data directory")
    parser.add_argument(
        "--node-timeout", type=int, default=5000, help="cluster-node-timeout in ms (default 5000)"
    )
    parser.add_argument(
        "--base-port", type=int, help="client ports from here on (default: free ports)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(
        args.dir,
        masters=args.masters,
        replicas_per_master=args.replicas,
        node_timeout_ms=args.node_timeout,
        base_port=args.base_port,
    )
    try:
        cluster.start_cluster()
    except (LocalRedisError, ValueError) as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"localcluster: ready (data in {cluster.data_dir}); Ctrl-C to stop", flush=True)
        for node in sorted(cluster.nodes, key=lambda n: (n.role != "primary", n.port)):
            print(describe(node), flush=True)
        print(f"  REDIS_URL={cluster.url}", flush=True)
        reported: set[int] = set()
        while not stop.wait(0.5):
            # A node killed on purpose (failover practice) is reported once, not fatal.
            for port in cluster.ports:
                if not cluster.running(port) and port not in reported:
                    reported.add(port)
                    print(f"localcluster: node {port} exited", file=sys.stderr, flush=True)
            if len(reported) == len(cluster.ports):
                return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
