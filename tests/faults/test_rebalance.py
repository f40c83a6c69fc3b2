"""Rebalancing under load: workers join one at a time up to four, then leave down to one.

Gateway-like batches (one occurredAt per batch, many devices) are posted while worker 1 runs
alone, workers 2, 3 and 4 join, and they leave again: SIGTERM, SIGKILL, SIGTERM. Each shard of
the default layout has one owner at a time (``ingest_worker.ownership``):

* every change reaches the new deal (each shard's lease held by the worker ``assign`` names),
  and four workers hold two shards each;
* a worker giving shards up (to a newcomer, or on SIGTERM) leaves no consumer behind in their
  groups: it stored what it held back instead of leaving it to a reclaim;
* the SIGKILL lands while the worker holds pending entries, which its successor must claim;
* sampled every 100 ms, in one pipeline: no lease names a worker that is not running the
  shard by its own log, no two workers' logs run a shard at once, and no consumer reads a
  shard whose lease it did not hold (whatever the logs say);
* the loss checker: every accepted event stored once, nothing pending, rollups right.

The hand-over times, the backlog (lag + pending over the shards) at its peak and its
recovery after each change go to the row's notes in the loss checker's table.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import enum
import itertools
import json
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from tests.faults.checker import queue_state
from tests.faults.harness import Load, Services, Size, eventually
from tests.faults.test_chaos import CHAOS_ENV, Record, drain_within, judge

from ingest_worker.ownership import assign, lease_ms

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from tests.conftest import LocalRedisFactory

    from ingest_shared.keys import Keys, Shard
    from ingest_shared.settings import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


class Kind(enum.Enum):
    JOIN = "+"
    TERM = "SIGTERM"
    KILL = "SIGKILL"


@dataclass(frozen=True)
class Change:
    kind: Kind
    worker: str

    @property
    def label(self) -> str:
        return f"+{self.worker}" if self.kind is Kind.JOIN else f"{self.kind.value} {self.worker}"


FIRST = "worker-1"
# After worker 1 alone: 1 -> 4 -> 1, one at a time; the middle departure is a crash.
CHANGES = (
    Change(Kind.JOIN, "worker-2"),
    Change(Kind.JOIN, "worker-3"),
    Change(Kind.JOIN, "worker-4"),
    Change(Kind.TERM, "worker-4"),
    Change(Kind.KILL, "worker-2"),
    Change(Kind.TERM, "worker-3"),
)
DEVICES_PER_SHARD = 2
CLIENTS = 8
SAMPLE_EVERY_S = 0.1
MIN_DWELL_S = 1.5
HANDOVER_WITHIN_S = 20.0
STOP_WITHIN_S = 15.0
CATCH_WITHIN_S = 20.0
RECOVER_WITHIN_S = 30.0
# The load may run slower than its rate on a busy machine, never faster.
LOAD_WITHIN_FACTOR = 3.0
# The backlog is back to normal below this multiple of its 95th percentile with one worker
# before the first change (and never demands less than this many entries).
RECOVERED_FACTOR = 2.0
RECOVERED_FLOOR = 50
# A worker logs shard_given_up just after its lease release returns, its successor logs
# shard_taken just after its hold returns: the two lines may be out of order by a reply's
# travel time. Two real owners at once would overlap by a whole tick (1 s) or more.
LOG_SKEW_S = 0.05
# XINFO's idle times are whole milliseconds, and the commands of a sample's pipeline run
# one after another.
CLOCK_SKEW_S = 0.005


def lease_ttl_s(settings: Settings) -> float:
    """How long a dead worker's lease outlives it at most."""
    return lease_ms(settings) / 1000


def gateway_devices(keys: Keys, per_shard: int) -> tuple[str, ...]:
    """``per_shard`` device names per shard, ordered so that any ``len(keys.shards)`` in a
    row fall in different shards.

    A gateway batch has one occurredAt; the per-metric partial of a shard keeps one sample
    per millisecond (``DUPLICATE_POLICY LAST``), so two events of one batch in one shard would
    leave one of them out of it, which the checker counts as a fault.
    """
    order = {shard.tag: position for position, shard in enumerate(keys.shards)}
    by_shard: list[list[str]] = [[] for _ in keys.shards]
    for n in itertools.count():
        if all(len(names) == per_shard for names in by_shard):
            break
        name = f"gw-dev-{n}"
        names = by_shard[order[keys.shard_of_source(name).tag]]
        if len(names) < per_shard:
            names.append(name)
    return tuple(names[i] for i in range(per_shard) for names in by_shard)


@dataclass(frozen=True)
class Sample:
    """The leases and the backlog at one moment."""

    at: float  # time.monotonic() when it was taken
    server_s: float  # Redis TIME when it was read: the clock of the workers' logs too
    owners: tuple[str | None, ...]  # each shard's lease holder, in shard order
    backlog: int  # lag + pending, summed over the shards
    beating: frozenset[str]  # the workers in the heartbeat set
    # Per shard, each consumer's last read or claim (Redis time), from the group's XINFO.
    seen: tuple[dict[str, float], ...]


class Sampler:
    """Reads every shard's lease and group, and the heartbeats, every ``every_s`` while
    running: in one pipeline, so all of a sample is read at one Redis time."""

    def __init__(self, redis: Redis, settings: Settings, every_s: float = SAMPLE_EVERY_S) -> None:
        self._redis = redis
        self._settings = settings
        self._every_s = every_s
        self._leases = [shard.lease() for shard in settings.keys.shards]
        self._workers = settings.keys.workers
        self.samples: list[Sample] = []

    async def owners(self) -> tuple[str | None, ...]:
        values = await self._redis.mget(self._leases)
        return tuple(None if value is None else _text(value) for value in values)

    async def _sample(self) -> Sample:
        at = time.monotonic()
        group = self._settings.consumer_group
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.mget(self._leases)
        pipe.zrange(self._workers, 0, -1)
        for shard in self._settings.keys.shards:
            pipe.xinfo_groups(shard.stream)
            pipe.xinfo_consumers(shard.stream, group)
        (seconds, micros), leases, members, *infos = await pipe.execute(raise_on_error=False)
        server_s = seconds + micros / 1e6
        backlog, seen, unknown_lag = 0, [], False
        for groups, rows in zip(infos[::2], infos[1::2], strict=True):
            # No stream or no group yet: an error in its place, and nothing there.
            for info in [] if isinstance(groups, ResponseError) else groups:
                if _text(info["name"]) == group:
                    backlog += int(info["pending"]) + int(info.get("lag") or 0)
                    unknown_lag |= info.get("lag") is None
            idle = [] if isinstance(rows, ResponseError) else rows
            seen.append({_text(r["name"]): server_s - int(r["idle"]) / 1000 for r in idle})
        if unknown_lag:  # after deletions: count what was never delivered the long way
            state = await queue_state(self._redis, self._settings)
            backlog = state.pending + state.undelivered
        owners = tuple(None if value is None else _text(value) for value in leases)
        beating = frozenset(_text(member) for member in members)
        return Sample(at, server_s, owners, backlog, beating, tuple(seen))

    async def _run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            self.samples.append(await self._sample())
            due = max(due + self._every_s, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - loop.time())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(stop))
        try:
            yield self
        finally:
            stop.set()
            await task

    def between(self, start: float, end: float = math.inf) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]


@dataclass
class Step:
    """One change and what it took to reach its deal."""

    change: Change
    at: float  # time.monotonic() of the signal or the process start
    handover_s: float = 0.0
    owners: tuple[str, ...] = ()  # the deal reached, in shard order
    left_pending: int = 0  # a SIGKILLed worker's pending entries, claimed by others later

    @property
    def label(self) -> str:
        return self.change.label


@dataclass(frozen=True)
class Tenure:
    """A worker running a shard, by its own log (wall-clock seconds)."""

    worker: str
    shard: int
    start: float
    end: float


@dataclass
class Run:
    """What the test did and saw, judged after the load."""

    settings: Settings
    steps: list[Step] = field(default_factory=list)
    killed_at: dict[str, float] = field(default_factory=dict)  # worker -> wall clock
    live: list[str] = field(default_factory=list)

    @property
    def shards(self) -> list[Shard]:
        return list(self.settings.keys.shards)

    def deal(self) -> tuple[str, ...]:
        owners = assign(self.shards, sorted(self.live))
        return tuple(owners[shard.tag] for shard in self.shards)


async def reach_deal(run: Run, sampler: Sampler, step: Step) -> None:
    """Wait until every lease names the owner the deal of the live workers gives it."""
    want = run.deal()

    async def reached() -> bool:
        return await sampler.owners() == want

    what = f"{step.label}: the shards to be dealt to {sorted(run.live)}"
    await eventually(reached, HANDOVER_WITHIN_S, what, poll_s=0.02)
    step.handover_s = time.monotonic() - step.at
    step.owners = want
    counts = Counter(want)
    fair = len(want) / len(run.live)
    assert set(counts) == set(run.live), f"{step.label}: a live worker holds no shard: {counts}"
    assert all(math.floor(fair) <= n <= math.ceil(fair) for n in counts.values()), counts


async def consumers(
    redis: Redis, settings: Settings, shards: Sequence[Shard] = (), column: str = "pending"
) -> dict[str, dict[str, int]]:
    """Each consumer of the group on each shard (default: all) with its XINFO ``column``
    (pending entries; idle: ms since its last read or claim), by stream."""
    found: dict[str, dict[str, int]] = {}
    for shard in shards or settings.keys.shards:
        with contextlib.suppress(ResponseError):  # no stream or no group yet: no consumer
            rows: list[dict[str, Any]] = await redis.xinfo_consumers(
                shard.stream, settings.consumer_group
            )
            found[shard.stream] = {_text(row["name"]): int(row[column]) for row in rows}
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def freeze_holding_pending(services: Services, redis: Redis, run: Run, worker: str) -> int:
    """Leave ``worker`` stopped (SIGSTOP) at a moment it holds delivered, unacknowledged
    entries, so that its SIGKILL leaves them to XAUTOCLAIM; how many. A try that finds none
    lets it go on at once (a few ms: far from its heartbeat's live window)."""
    process = services.processes[worker]
    shards = [shard for shard, owner in zip(run.shards, run.deal(), strict=True) if owner == worker]
    held = 0

    async def caught() -> bool:
        nonlocal held
        process.send_signal(signal.SIGSTOP)
        by_stream = await consumers(redis, run.settings, shards)
        held = sum(by_name.get(worker, 0) for by_name in by_stream.values())
        if not held:
            process.send_signal(signal.SIGCONT)
        return held > 0

    await eventually(caught, CATCH_WITHIN_S, f"{worker} to hold pending entries", poll_s=0.01)
    return held


async def left_behind(
    redis: Redis, settings: Settings, worker: str, shards: Sequence[Shard] = ()
) -> dict[str, int]:
    """The streams of ``shards`` (default: all) where ``worker`` is still a consumer of the
    group, with its pending entries."""
    by_stream = await consumers(redis, settings, shards)
    return {stream: names[worker] for stream, names in by_stream.items() if worker in names}


async def change(run: Run, services: Services, sampler: Sampler, redis: Redis, c: Change) -> Step:
    """Apply one change and wait for its deal.

    A worker giving a shard up (to a newcomer, or because it stops) finishes its batch,
    stores what it held back and deletes its consumer from the shard's group before it
    releases the lease: a consumer left there holds entries that would wait
    INGEST_CLAIM_IDLE_MS for a reclaim.
    """
    step = Step(c, time.monotonic())
    before = run.deal()
    if c.kind is Kind.JOIN:
        services.start_worker(c.worker, c.worker)
        run.live.append(c.worker)
        await reach_deal(run, sampler, step)
    elif c.kind is Kind.KILL:
        step.left_pending = await freeze_holding_pending(services, redis, run, c.worker)
        step.at = time.monotonic()
        run.killed_at[c.worker] = time.time()
        services.kill(c.worker)
        run.live.remove(c.worker)
        await reach_deal(run, sampler, step)
    else:
        services.processes[c.worker].send_signal(signal.SIGTERM)
        run.live.remove(c.worker)
        handover = asyncio.create_task(reach_deal(run, sampler, step))
        try:
            status = await services.exited(c.worker, STOP_WITHIN_S)
            left = await left_behind(redis, run.settings, c.worker)
            await handover
        finally:
            handover.cancel()  # when something above failed
        assert status == 0, f"{c.worker} exited with {status} after SIGTERM"
        assert not left, f"{c.worker} stopped by SIGTERM left its consumer (pending): {left}"
    for old in set(before) - run.killed_at.keys():
        gave_up = [
            shard
            for shard, was, now in zip(run.shards, before, step.owners, strict=True)
            if was == old != now
        ]
        left = await left_behind(redis, run.settings, old, gave_up) if gave_up else {}
        assert not left, f"{c.label}: {old} gave shards up leaving its consumer (pending): {left}"
    return step


# --- what the logs and the lease samples say ------------------------------------------------


def tenures(services: Services, workers: Sequence[str], ends: dict[str, float]) -> list[Tenure]:
    """Every shard each worker ran, from its ``shard_taken``/``shard_given_up`` lines; a shard
    still running ends at ``ends[worker]`` (the kill), or never."""
    found = []
    for worker in workers:
        running: dict[int, float] = {}
        for line in services.log(worker).splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by SIGKILL
                continue
            event = record.get("event") if isinstance(record, dict) else None
            if event not in ("shard_taken", "shard_given_up"):
                continue
            at = dt.datetime.fromisoformat(record["timestamp"]).timestamp()
            shard = int(record["shard"])
            if event == "shard_taken":
                assert shard not in running, f"{worker} took shard {shard} twice: {line}"
                running[shard] = at
            else:
                found.append(Tenure(worker, shard, running.pop(shard), at))
        end = ends.get(worker, math.inf)
        found += [Tenure(worker, shard, start, end) for shard, start in running.items()]
    return found


def overlaps(held: list[Tenure]) -> list[str]:
    """Two workers running one shard at the same time."""
    found = []
    for a, b in itertools.combinations(held, 2):
        same = a.shard == b.shard and a.worker != b.worker
        if same and a.start < b.end - LOG_SKEW_S and b.start < a.end - LOG_SKEW_S:
            found.append(f"shard {a.shard}: {a} and {b}")
    return found


def lease_mismatches(
    samples: list[Sample], held: list[Tenure], killed_at: dict[str, float], ttl_s: float
) -> list[str]:
    """Samples whose lease names a worker not running the shard (a dead one's lease may
    outlive it by its TTL), or while another worker ran it."""
    found = []
    for sample in samples:
        before, after = sample.server_s - CLOCK_SKEW_S, sample.server_s + CLOCK_SKEW_S
        for shard, owner in enumerate(sample.owners):
            if owner is None:
                continue
            running = {
                t.worker
                for t in held
                if t.shard == shard and t.start - LOG_SKEW_S <= after and before <= t.end
            }
            others = {
                t.worker
                for t in held
                if t.shard == shard
                and t.worker != owner
                and t.start + LOG_SKEW_S < before
                and after < t.end - LOG_SKEW_S
            }
            expiring = owner in killed_at and before <= killed_at[owner] + ttl_s + LOG_SKEW_S
            if (owner not in running and not expiring) or others:
                found.append(
                    f"shard {shard} at {before:.3f}: lease names {owner}, running it: "
                    f"{sorted(running | others)}"
                )
    return found


def reads_without_lease(samples: list[Sample]) -> list[str]:
    """Reads or claims on a shard by a consumer that held its lease neither at the sample
    before nor at the one after: a second worker consuming a shard, whatever its log says.

    Every read of a worker giving a shard up returns before its release, and its successor
    reads after taking the lease, so a hand-over between two samples allows both.
    """
    found = []
    reads = {
        (shard, name, at)
        for sample in samples
        for shard, seen in enumerate(sample.seen)
        for name, at in seen.items()
        if at >= samples[0].server_s
    }
    times = [s.server_s for s in samples]
    for shard, name, at in sorted(reads, key=lambda read: read[2]):
        before = bisect.bisect_right(times, at + CLOCK_SKEW_S) - 1
        after = bisect.bisect_left(times, at - CLOCK_SKEW_S)
        owners = {samples[i].owners[shard] for i in (before, after) if 0 <= i < len(samples)}
        if name not in owners:
            found.append(f"shard {shard}: {name} read at {at:.3f}, lease holders {owners}")
    return found


def unread(samples: list[Sample], steps: list[Step]) -> list[str]:
    """Owners that never read their shard: each shard's lease holders by the deals must all
    show up as its consumers (holding the lease is not running the shard)."""
    found = []
    for shard in range(len(steps[0].owners)):
        readers = {name for sample in samples for name in sample.seen[shard]}
        owners = {step.owners[shard] for step in steps}
        if owners - readers:
            found.append(f"shard {shard}: {sorted(owners - readers)} never read it")
    return found


def moves(samples: list[Sample], shards: int) -> int:
    """How often a shard's lease went to another worker (gaps without a lease ignored)."""
    total = 0
    for shard in range(shards):
        owners = [s.owners[shard] for s in samples if s.owners[shard] is not None]
        total += sum(1 for a, b in itertools.pairwise(owners) if a != b)
    return total


def heartbeat_drops(samples: list[Sample], departed: dict[str, float]) -> Counter[str]:
    """How often another worker's tick pruned a running worker from the heartbeat set (its
    heartbeat looked older than the live window): its shards are dealt away for a tick."""
    drops: Counter[str] = Counter()
    for a, b in itertools.pairwise(samples):
        for worker in a.beating - b.beating:
            if b.at < departed.get(worker, math.inf):
                drops[worker] += 1
    return drops


def expected_moves(steps: list[Step]) -> int:
    return sum(
        sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
        for before, after in itertools.pairwise(steps)
    )


# --- the backlog -----------------------------------------------------------------------------


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def first_beat_s(samples: list[Sample], step: Step) -> float:
    """From ``step`` (a start) to the first sample with its worker in the heartbeat set."""
    worker = step.change.worker
    beat = next((s.at for s in samples if s.at >= step.at and worker in s.beating), math.nan)
    return beat - step.at


def step_at(steps: list[Step], at: float) -> str:
    """The change in force at ``at``, and how long after it."""
    step = max((s for s in steps if s.at <= at), key=lambda s: s.at, default=steps[0])
    return f"{step.label} +{at - step.at:.1f} s"


def recovery_s(samples: list[Sample], since: float, threshold: float) -> float | None:
    """From ``since`` to the first sample at or below ``threshold`` after the backlog's
    highest point among ``samples`` (those from ``since`` on); None if it never came back."""
    after = [s for s in samples if s.at >= since]
    if not after:
        return None
    peak = max(range(len(after)), key=lambda i: after[i].backlog)
    back = next((s for s in after[peak:] if s.backlog <= threshold), None)
    return None if back is None else back.at - since


def per_change(samples: list[Sample], steps: list[Step], threshold: float) -> str:
    """Each change's backlog peak (until the next change) and when it was back under
    ``threshold``, counted from the change."""
    parts = []
    changes = steps[1:]
    ends = [s.at for s in changes[1:]] + [math.inf]
    for step, end in zip(changes, ends, strict=True):
        window = [s for s in samples if step.at <= s.at < end]
        peak = max((s.backlog for s in window), default=0)
        back = recovery_s(window, step.at, threshold)
        parts.append(f"{step.label} {peak:,}/{'-' if back is None else f'{back:.1f} s'}")
    return ", ".join(parts)


def ownership_conflicts(run: Run, services: Services, samples: list[Sample]) -> list[str]:
    """The workers' own logs against each other and against the leases, and the reads."""
    workers = [FIRST, *dict.fromkeys(c.worker for c in CHANGES)]
    held = tenures(services, workers, {FIRST: math.inf, **run.killed_at})
    return (
        overlaps(held)
        + lease_mismatches(samples, held, run.killed_at, lease_ttl_s(run.settings))
        + reads_without_lease(samples)
        + unread(samples, run.steps)
    )


def measurements(
    run: Run, samples: list[Sample], threshold: float, recovered: float
) -> dict[str, str]:
    """Hand-over times, the backlog's peak and recoveries, heartbeat drops, for the notes."""
    steps = run.steps
    joins = [s for s in steps[1:] if s.change.kind is Kind.JOIN]
    departed = {s.change.worker: s.at for s in steps if s.change.kind is not Kind.JOIN}
    drops = heartbeat_drops(samples, departed)
    peak = max(samples, key=lambda s: s.backlog)
    return {
        "hand-over s": ", ".join(
            f"{s.label} {s.handover_s:.1f}"
            + (f" (beat {first_beat_s(samples, s):.1f})" if s in joins else "")
            for s in steps
        ),
        "backlog peak": f"{peak.backlog:,} ({step_at(steps, peak.at)})",
        "after the last change": f"back <= {threshold:.0f} in {recovered:.1f} s",
        f"per change (peak/back <= {threshold:.0f})": per_change(samples, steps, threshold),
        "heartbeat drops": ", ".join(f"{w} {n}" for w, n in sorted(drops.items())) or "0",
    }


# --- the test --------------------------------------------------------------------------------


async def test_workers_join_one_by_one_to_four_and_leave_to_one_under_load_lose_nothing(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    size = Size.scaled(ci_events=4_000, ci_rate=300, full_rate=2_500)
    server = local_redis_server()
    services = Services(server.url, tmp_path, env=CHAOS_ENV)
    run = Run(services.settings)
    shards = len(run.shards)
    assert shards == 8, "the default layout has 8 shards"
    # The changes spread over the load: each deal runs about as long at every size.
    load_s = size.events / size.rate
    dwell_s = max(MIN_DWELL_S, load_s / (len(CHANGES) + 2))
    async with Redis.from_url(server.url) as redis:
        sampler = Sampler(redis, run.settings)
        with services.running("ingest-producer"):
            first = Step(Change(Kind.JOIN, FIRST), time.monotonic())
            services.start_worker(FIRST, FIRST)
            run.live.append(FIRST)
            await services.ready()
            await reach_deal(run, sampler, first)
            run.steps.append(first)
            load = Load(
                services.base_url,
                batch=shards,
                concurrency=CLIENTS,
                rate=size.rate,
                one_time_per_batch=True,
                source_names=gateway_devices(run.settings.keys, DEVICES_PER_SHARD),
            )
            async with sampler.running(), load.running():
                calm_from = time.monotonic()
                await asyncio.sleep(dwell_s)
                for c in CHANGES:
                    step = await change(run, services, sampler, redis, c)
                    run.steps.append(step)
                    print(f"\n  {step.label}: deal in {step.handover_s:.2f} s", end="")
                    await asyncio.sleep(dwell_s)
                last = run.steps[-1]
                calm = [s.backlog for s in sampler.between(calm_from + 0.5, run.steps[1].at)]
                threshold = max(RECOVERED_FLOOR, RECOVERED_FACTOR * percentile(calm, 0.95))

                async def finished() -> bool:
                    waited = time.monotonic() - last.at >= RECOVER_WITHIN_S
                    recovered = recovery_s(sampler.samples, last.at, threshold) is not None
                    return load.sent >= size.events and (recovered or waited)

                await eventually(
                    finished, LOAD_WITHIN_FACTOR * load_s + RECOVER_WITHIN_S, "the load"
                )
            services.alive()
            assert run.live == [FIRST]
            assert run.steps[-1].owners == (FIRST,) * shards

            samples = sampler.samples
            recovered = recovery_s(samples, last.at, threshold)
            assert recovered is not None, (
                f"the backlog did not come back below {threshold:.0f} within "
                f"{RECOVER_WITHIN_S} s of {last.label} under load"
            )
            conflicts = ownership_conflicts(run, services, samples)
            assert not conflicts, f"{len(conflicts)} ownership conflicts: " + "; ".join(
                conflicts[:5]
            )
            moved, dealt = moves(samples, shards), expected_moves(run.steps)
            assert moved >= dealt, f"leases moved {moved} times, the deals {dealt}"
            killed = next(s for s in run.steps if s.change.kind is Kind.KILL)
            assert killed.left_pending > 0
            at_four = Counter(next(s.owners for s in run.steps if len(set(s.owners)) == 4))
            notes = {
                **measurements(run, samples, threshold, recovered),
                "shards at 4 workers": ", ".join(f"{w} {n}" for w, n in sorted(at_four.items())),
                "one-worker p95": f"{percentile(calm, 0.95):.0f}",
                "lease moves": f"{moved} (deals {dealt})",
                "SIGKILL left pending": str(killed.left_pending),
                "samples": str(len(samples)),
            }
            print()
            for key, value in notes.items():
                print(f"  {key}: {value}")
            assert sorted(at_four.values()) == [2, 2, 2, 2], at_four
            await judge(
                redis,
                run.settings,
                load.outcomes,
                record,
                name="workers 1 -> 4 -> 1 (SIGTERM, one SIGKILL), 8 shards",
                drain_s=drain_within(size.events),
                notes=notes,
            )
