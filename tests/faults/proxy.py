"""A TCP proxy in front of Redis whose network can be broken at runtime, for the chaos tests.

Point a service's ``REDIS_URL`` at :attr:`ChaosProxy.url`; then, while it runs:

* :meth:`ChaosProxy.reset_all` resets every open connection (RST both ways);
* :meth:`ChaosProxy.blackhole` accepts connections and reads what is sent but forwards nothing
  until :meth:`ChaosProxy.pass_through`; what was held is delivered then, as TCP retransmits
  after a partition heals (a command sent into the hole may run after its client gave up);
* :meth:`ChaosProxy.add_latency` delays every chunk each way (order kept);
* :meth:`ChaosProxy.cut_next_reply` forwards half of the next server->client chunk, then closes
  that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

HOST = "127.0.0.1"
CHUNK = 65_536
STOP_TIMEOUT_S = 5.0
# SO_LINGER on, 0 s: close() sends RST instead of FIN.
_RST = struct.pack("ii", 1, 0)


@dataclass
class ProxyStats:
    """What the proxy did, for the test's report."""

    connections: int = 0
    resets: int = 0
    cuts: int = 0
    held_chunks: int = 0


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.closed = asyncio.Event()

    def close(self, *, reset: bool = False) -> None:
        for writer in self.writers:
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                writer.transport.abort()
            else:
                writer.close()
        self.closed.set()


class ChaosProxy:
    """Listens on a free loopback port and forwards to ``upstream_port``."""

    def __init__(self, upstream_port: int, upstream_host: str = HOST) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._latency_s = 0.0
        self._cuts_armed = 0
        self.stats = ProxyStats()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    # --- the faults --------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything at once again (ends a blackhole or a latency)."""
        self._latency_s = 0.0
        self._flowing.set()

    def add_latency(self, seconds: float = 0.2) -> None:
        """Delay every chunk read from now on by ``seconds``, each way."""
        self._latency_s = seconds

    def blackhole(self) -> None:
        """Forward nothing, on open and new connections alike, until :meth:`pass_through`."""
        self._flowing.clear()

    def reset_all(self) -> int:
        """Reset every open connection; how many there were."""
        links = list(self._links)
        for link in links:
            link.close(reset=True)
        self.stats.resets += len(links)
        return len(links)

    def cut_next_reply(self) -> None:
        """Forward half of the next server->client chunk, on any connection, then close it."""
        self._cuts_armed += 1

    # --- plumbing ----------------------------------------------------------------------------

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection; wait for their handlers to finish."""
        self.pass_through()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(reset=True)
        # Closed links end their handlers; cancelling a handler instead makes asyncio's
        # start_server log the CancelledError as an unhandled exception.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> ChaosProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        except BaseException:  # cancelled while connecting (the proxy is closing)
            writer.transport.abort()
            raise
        link = _Link(writer, up_writer)
        self._links.add(link)
        to_server: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        to_client: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._read(reader, to_server)),
            asyncio.create_task(self._read(up_reader, to_client)),
            asyncio.create_task(self._write(to_server, up_writer, link, reply=False)),
            asyncio.create_task(self._write(to_client, writer, link, reply=True)),
        ]
        closed = asyncio.create_task(link.closed.wait())
        try:
            await asyncio.wait([*pumps, closed], return_when=asyncio.FIRST_COMPLETED)
            # A reader that hit EOF queues None: let its writer deliver what it holds first.
            if not link.closed.is_set():
                await asyncio.wait(
                    [pumps[2], pumps[3], closed], return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            self._links.discard(link)
            for task in [*pumps, closed]:
                task.cancel()
            await asyncio.gather(*pumps, closed, return_exceptions=True)
            if not link.closed.is_set():
                link.close()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                queue.put_nowait((loop.time() + self._latency_s, data))
        queue.put_nowait(None)

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        reply: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            if not self._flowing.is_set():
                self.stats.held_chunks += 1
                await self._flowing.wait()
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            if reply and self._cuts_armed:
                self._cuts_armed -= 1
                self.stats.cuts += 1
                writer.write(data[: max(1, len(data) // 2)])
                with contextlib.suppress(OSError):
                    await writer.drain()
                link.close()
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                break
        link.close()
