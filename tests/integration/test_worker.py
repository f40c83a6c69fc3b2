"""The worker daemon against a real Redis: in-process for the loop, as a subprocess for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog

from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call, create_redis
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_worker import daemon, metrics
from ingest_worker.daemon import Worker
from ingest_worker.reader import reply_budget
from ingest_worker.reclaim import MAX_DELIVERIES_REASON

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis
    from redis.typing import EncodableT, FieldT
    from tests.conftest import LocalRedisFactory

# One stream: these tests drive one Worker loop (tests/integration/test_shard_ownership.py and
# the fault suite cover the default, sharded layout).
STREAM = Settings().stream_key
GROUP = Settings().consumer_group
KEYS = Settings(stream_shards=1).keys
BASE_MS = now_ms() - 60_000
WORKER_BIN = Path(sys.executable).parent / "ingest-worker"
GRACE_S = 5.0


def settings_for(url: str, **changes: object) -> Settings:
    """Fast settings: short blocking reads and reclaim intervals, a known consumer name."""
    fast = Settings(
        redis_url=url,
        block_ms=50,
        claim_interval_ms=20,
        consumer_name="alive",
        batch_size=100,
        stream_shards=1,
    )
    return replace(fast, **changes)  # type: ignore[arg-type]


def event(n: int, source: str = "sensor-a") -> dict[FieldT, EncodableT]:
    return {
        k.FIELD_SOURCE: source.encode(),
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: str(n).encode(),
        k.FIELD_OCCURRED_AT: format_ms(BASE_MS + n).encode(),
    }


async def enqueue(redis: Redis, count: int, source: str = "sensor-a") -> list[bytes]:
    ids: list[bytes] = []
    for n in range(count):
        fields = itertools.chain.from_iterable(event(n, source).items())
        ids.append(await call(redis, "XADD", STREAM, "*", *fields))
    return ids


async def read_without_ack(redis: Redis, consumer: str, count: int) -> None:
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    await redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)


async def stored(redis: Redis, source: str = "sensor-a") -> int:
    key = KEYS.source_raw("cpu", source)
    if not await redis.exists(key):
        return 0
    return len(await call(redis, "TS.RANGE", key, "-", "+"))


async def pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def drained(redis: Redis, count: int, source: str = "sensor-a") -> bool:
    return await stored(redis, source) == count and await pending(redis) == 0


@contextlib.asynccontextmanager
async def worker_for(settings: Settings) -> AsyncIterator[Worker]:
    """A Worker with its own client, which is closed afterwards."""
    client = create_redis(
        settings.redis_url,
        socket_timeout=settings.block_ms / 1000 + 5,
        max_reply_bytes=reply_budget(settings),
    )
    try:
        yield Worker(client, create_processor(client, settings), settings)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[None]:
    """A Worker running until the block ends, then stopped; its errors are raised."""
    async with worker_for(settings) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.stop()
            await asyncio.wait_for(task, GRACE_S)


async def test_dead_consumers_entries_are_reclaimed_and_processed(
    redis: Redis, redis_url: str
) -> None:
    await enqueue(redis, 5)
    await read_without_ack(redis, "dead", 5)

    async with running(settings_for(redis_url, claim_idle_ms=50)):
        await eventually(lambda: drained(redis, 5))

    assert await redis.xlen(KEYS.dead_letter) == 0


async def test_poison_entry_is_dead_lettered_after_max_deliveries(
    redis: Redis, redis_url: str
) -> None:
    [poison] = await enqueue(redis, 1, source="poison")
    await read_without_ack(redis, "dead", 1)
    for _ in range(2):  # delivered 3 times in all, never acked: the claim is the 4th
        await redis.xreadgroup(GROUP, "dead", {STREAM: "0"})

    async with running(settings_for(redis_url, claim_idle_ms=50, max_deliveries=3)):
        await eventually(lambda: redis_has_no_pending(redis))

    [(_, letter)] = await call(redis, "XRANGE", KEYS.dead_letter, "-", "+")
    assert letter[b"messageId"] == poison
    assert letter[b"reason"] == MAX_DELIVERIES_REASON.encode()
    assert letter[b"consumer"] == b"alive"
    assert await stored(redis, source="poison") == 0


async def redis_has_no_pending(redis: Redis) -> bool:
    return await pending(redis) == 0


async def test_own_pending_entries_are_processed_on_start_without_waiting_for_a_reclaim(
    redis: Redis, redis_url: str
) -> None:
    await enqueue(redis, 3)
    await read_without_ack(redis, "alive", 3)
    await enqueue(redis, 2, source="sensor-b")
    an_hour = 3_600_000

    async with running(settings_for(redis_url, claim_idle_ms=an_hour)):
        await eventually(lambda: drained(redis, 3), within=2.0)
        await eventually(lambda: drained(redis, 2, source="sensor-b"), within=2.0)


async def test_own_pending_entry_delivered_too_often_is_dead_lettered_on_start(
    redis: Redis, redis_url: str
) -> None:
    [poison] = await enqueue(redis, 1, source="poison")
    await read_without_ack(redis, "alive", 1)  # the 1st delivery; the restart reads the 2nd

    async with running(settings_for(redis_url, claim_idle_ms=3_600_000, max_deliveries=1)):
        await eventually(lambda: redis_has_no_pending(redis), within=2.0)

    [(_, letter)] = await call(redis, "XRANGE", KEYS.dead_letter, "-", "+")
    assert (letter[b"messageId"], letter[b"reason"]) == (poison, MAX_DELIVERIES_REASON.encode())


async def test_unexpected_error_leaves_the_batch_pending_and_the_loop_goes_on(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "UNEXPECTED_ERROR_DELAY_S", 0.05)
    await redis.set(KEYS.dead_letter, "not a stream")  # dead-lettering fails: WRONGTYPE
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    garbage = await redis.xadd(STREAM, {"garbage": "1"})
    await enqueue(redis, 2)

    async with running(settings_for(redis_url, batch_size=1)):
        await eventually(lambda: stored_equals(redis, 2))

    rows = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [row["message_id"] for row in rows] == [garbage]


async def stored_equals(redis: Redis, count: int) -> bool:
    return await stored(redis) == count


@pytest.mark.parametrize("max_entry_bytes", [0, 65_536], ids=["native-read", "bounded-read"])
async def test_transient_error_keeps_the_batch_pending_until_redis_recovers(
    redis: Redis, redis_url: str, max_entry_bytes: int
) -> None:
    policy = str((await redis.config_get("maxmemory-policy"))["maxmemory-policy"])
    await redis.config_set("maxmemory-policy", "noeviction")
    try:
        async with running(settings_for(redis_url, max_entry_bytes=max_entry_bytes)):
            await eventually(lambda: consumer_exists(redis, "alive"))
            # Enqueue and fill the memory atomically: the worker gets the batch, writes fail.
            async with redis.pipeline(transaction=True) as tx:
                for n in range(3):
                    tx.xadd(STREAM, event(n))
                tx.config_set("maxmemory", 1)
                await tx.execute()
            if max_entry_bytes == 0:
                # The native read still works out of memory: the batch is read, its writes fail.
                await eventually(lambda: pending_equals(redis, 3))
            # (The bounded read is a function, which Redis refuses out of memory: at most the
            # one entry of the idle native read is delivered.) Several retries, all refused:
            await asyncio.sleep(0.5)
            assert await pending(redis) <= 3
            assert await stored(redis) == 0

            await redis.config_set("maxmemory", 0)
            await eventually(lambda: drained(redis, 3))
    finally:
        await redis.config_set("maxmemory", 0)
        await redis.config_set("maxmemory-policy", policy)


async def consumer_exists(redis: Redis, name: str) -> bool:
    groups = await redis.xinfo_groups(STREAM) if await redis.exists(STREAM) else []
    if not groups:
        return False
    consumers = await redis.xinfo_consumers(STREAM, GROUP)
    return any(consumer["name"] == name.encode() for consumer in consumers)


async def pending_equals(redis: Redis, count: int) -> bool:
    return await pending(redis) == count


async def test_worker_waits_for_redis_at_startup_and_survives_a_restart(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server(appendonly=True)
    async with create_redis(server.url, socket_timeout=5) as redis:
        await enqueue(redis, 3)
    server.stop()

    async with running(settings_for(server.url)):
        await asyncio.sleep(0.5)  # retrying with backoff meanwhile
        await asyncio.to_thread(server.start)
        async with create_redis(server.url, socket_timeout=5) as redis:
            await eventually(lambda: drained(redis, 3))

        server.kill()
        await asyncio.to_thread(server.start)
        async with create_redis(server.url, socket_timeout=5) as redis:
            await enqueue(redis, 6)  # same timestamps as before: three new, three duplicates
            await eventually(lambda: drained(redis, 6))


async def test_entries_handed_to_a_dead_connection_are_processed_right_after_the_reconnect(
    redis: Redis, redis_url: str
) -> None:
    # Redis can hand entries to a blocked XREADGROUP whose client already gave up on it (a
    # stall past the socket timeout). They are pending under this consumer's name; the
    # worker must not leave them to XAUTOCLAIM (an hour here).
    async with running(settings_for(redis_url, claim_idle_ms=3_600_000, block_ms=1_000)):
        await eventually(lambda: consumer_exists(redis, "alive"))
        await eventually(lambda: has_blocked_reader(redis))
        reader = await blocked_reader(redis)
        assert reader is not None
        await call(redis, "CLIENT", "KILL", "ID", reader)
        await enqueue(redis, 3)
        # What the dead connection would have received: a delivery to the same consumer.
        await redis.xreadgroup(GROUP, "alive", {STREAM: ">"}, count=3)
        assert await pending(redis) == 3

        await eventually(lambda: drained(redis, 3), within=5.0)


async def has_blocked_reader(redis: Redis) -> bool:
    return await blocked_reader(redis) is not None


async def blocked_reader(redis: Redis) -> int | None:
    """The id of the connection blocked in XREADGROUP (the worker's), if any."""
    clients = await redis.client_list()
    ids = [int(c["id"]) for c in clients if c.get("cmd") == "xreadgroup" and "b" in c["flags"]]
    return ids[0] if ids else None


async def test_deleted_group_is_recreated_at_zero_and_the_worker_carries_on(
    redis: Redis, redis_url: str
) -> None:
    before = metrics.GROUP_RECREATED._value.get()
    with structlog.testing.capture_logs() as logs:
        async with running(settings_for(redis_url)):
            await eventually(lambda: consumer_exists(redis, "alive"))
            await redis.xgroup_destroy(STREAM, GROUP)
            await enqueue(redis, 3)  # nobody reads them until the group is back

            await eventually(lambda: drained(redis, 3))
    assert metrics.GROUP_RECREATED._value.get() == before + 1
    [line] = [log for log in logs if log["event"] == "consumer_group_recreated"]
    assert (line["log_level"], line["created_by"]) == ("error", "this worker")


async def test_wrong_type_at_the_stream_key_stops_the_worker_with_a_configuration_error(
    redis: Redis, redis_url: str
) -> None:
    async with worker_for(settings_for(redis_url)) as worker:
        task = asyncio.create_task(worker.run())
        await eventually(lambda: consumer_exists(redis, "alive"))
        await redis.delete(STREAM)
        await redis.set(STREAM, "not a stream")

        with pytest.raises(ConfigurationError, match="WRONGTYPE"):
            await asyncio.wait_for(task, GRACE_S)  # it ends by itself


# --- the real process -------------------------------------------------------------------


def worker_env(**env: str) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INGEST_") and name != "REDIS_URL"
    }
    fast = {
        "INGEST_BLOCK_MS": "100",
        "INGEST_STREAM_SHARDS": "1",
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_CONSUMER_NAME": "e2e",
        "INGEST_LOG_FORMAT": "json",
        "INGEST_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    return inherited | fast | env


async def start_worker(**env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        WORKER_BIN,
        env=worker_env(**env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def log_lines(stderr: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.decode().splitlines()]


async def test_worker_process_drains_the_stream_and_exits_zero_on_sigterm(
    redis: Redis, redis_url: str
) -> None:
    await enqueue(redis, 20)
    process = await start_worker(REDIS_URL=redis_url)
    try:
        await eventually(lambda: drained(redis, 20))
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), GRACE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0
    stopped = [line for line in log_lines(stderr) if line["event"] == "worker_stopped"]
    assert len(stopped) == 1
    assert stopped[0]["processed"] == 20


async def test_sigterm_while_redis_is_unreachable_exits_zero() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await start_worker(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    try:
        assert process.stderr is not None
        first = await asyncio.wait_for(process.stderr.readline(), GRACE_S)
        # INGEST_REDIS_MODE=auto could not ask Redis: it says so, assumes a single node.
        assert json.loads(first)["event"] == "redis_mode_unknown"
        second = await asyncio.wait_for(process.stderr.readline(), GRACE_S)
        assert json.loads(second)["event"] == "redis_unavailable"
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), GRACE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0


async def test_bad_setting_exits_2_with_one_line_naming_the_variable() -> None:
    process = await start_worker(INGEST_BATCH_SIZE="abc")
    _, stderr = await asyncio.wait_for(process.communicate(), GRACE_S)

    assert process.returncode == 2
    [line] = stderr.decode().splitlines()
    assert line == "ingest-worker: INGEST_BATCH_SIZE='abc' is not an integer"


async def test_worker_trims_what_every_group_finished_but_keeps_the_newest(
    redis: Redis, redis_url: str
) -> None:
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    ids = await enqueue(redis, 300)
    await redis.xgroup_create(STREAM, "audit", "$")  # a second group that is fully caught up
    settings = settings_for(redis_url, stream_keep=50, trim_interval_ms=100)
    async with running(settings):
        await eventually(lambda: drained(redis, 300))
        await eventually(lambda: _length_is(redis, 50))
    remaining = await redis.xrange(STREAM)
    assert [entry_id for entry_id, _ in remaining or []] == ids[-50:]


async def test_worker_never_trims_what_another_group_has_not_read(
    redis: Redis, redis_url: str
) -> None:
    await redis.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    await redis.xgroup_create(STREAM, "stopped-group", "0")  # has read nothing yet
    await enqueue(redis, 200)
    settings = settings_for(redis_url, stream_keep=10, trim_interval_ms=50)
    async with running(settings):
        await eventually(lambda: drained(redis, 200))
        await asyncio.sleep(0.3)  # several trim rounds
    assert await redis.xlen(STREAM) == 200


async def _length_is(redis: Redis, length: int) -> bool:
    return int(await redis.xlen(STREAM)) == length


async def enqueue_one_millisecond(redis: Redis, sources: int) -> None:
    """A gateway's request: one event per source, all of one metric and one millisecond."""
    at = format_ms(BASE_MS + 5_000).encode()
    for n in range(sources):
        fields = {
            k.FIELD_SOURCE: f"gw-{n}".encode(),
            k.FIELD_METRIC: b"cpu",
            k.FIELD_VALUE: str(n + 1).encode(),
            k.FIELD_OCCURRED_AT: at,
        }
        await call(redis, "XADD", STREAM, "*", *itertools.chain.from_iterable(fields.items()))


async def all_of_one_millisecond_stored(redis: Redis, sources: int) -> bool:
    counts = [await stored(redis, f"gw-{n}") for n in range(sources)]
    return counts == [1] * sources and await pending(redis) == 0


async def test_a_batch_held_back_whole_is_stored_once_the_stream_is_quiet(
    redis: Redis, redis_url: str
) -> None:
    # Every entry is in its metric's newest millisecond, so the first batch holds all of it
    # back for the next one; nothing newer comes: the worker must store it anyway, at once.
    async with running(settings_for(redis_url)):
        await asyncio.sleep(0.1)
        await enqueue_one_millisecond(redis, 30)
        await eventually(lambda: all_of_one_millisecond_stored(redis, 30), within=2.0)
    per_metric = await call(redis, "TS.RANGE", KEYS.raw("cpu"), "-", "+")
    assert [[ts, float(v)] for ts, v in per_metric] == [[BASE_MS + 5_000, 30.0]]


async def test_a_stop_stores_what_was_held_back(redis: Redis, redis_url: str) -> None:
    await enqueue_one_millisecond(redis, 20)
    async with worker_for(settings_for(redis_url)) as worker:
        assert await worker._set_up()
        await worker._step()
        await worker._settle_in_flight()
        # Read and held back: pending, not stored.
        assert await pending(redis) == 20
        assert await stored(redis, "gw-0") == 0
        await worker._finish()
    assert await all_of_one_millisecond_stored(redis, 20)
