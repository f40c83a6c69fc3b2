"""Cardinality caps: no client can create unbounded series or metric names.

Each device series (one per metric, source and label set) costs Redis ~14 KB with the default
rollup whether it holds one sample or a million, and each metric name adds a partial per shard
and a dashboard chart. So the first event of a series is *admitted* against three caps
(``INGEST_MAX_SERIES``, ``INGEST_MAX_METRICS``, and ``INGEST_MAX_SERIES_PER_KEY`` for each write
key), checked and recorded in one call of the ``ingest_admit`` function: concurrent producers
never pass a cap together. The registry is two sets in Redis (``keys.registry_*``) plus one per
write key; it is seeded at start with the series that existed before it.

The hot path stays a set lookup per event: each process remembers the series it has seen
admitted, so only an event of a series new to this process costs a round trip, before its
append. Events of existing series keep flowing when a cap is reached; only new series are
refused. With every cap at 0 the registry is off and costs nothing.

The count is exact but may run ahead of the data: a series admitted by a request whose append
then fails counts without holding a sample (bounded by the cap itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ingest_producer import metrics
from ingest_producer.models import Cardinality
from ingest_shared.functions import (
    ADMITTED,
    OVER_CLIENT,
    OVER_METRICS,
    OVER_SERIES,
    Admitted,
    admit_series,
)
from ingest_shared.keys import KIND_SOURCE_RAW, LABEL_KIND, series_identity
from ingest_shared.redis_client import call, each_primary
from ingest_shared.schema import canonical_labels, labels_digest

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ingest_shared.redis_client import RedisClient
    from ingest_shared.schema import EventOut
    from ingest_shared.settings import Settings

# Series this process remembers as admitted (then it forgets them all and asks Redis again).
KNOWN_LIMIT = 200_000
# Members per SADD when seeding.
_SEED_CHUNK = 10_000
# The registry name of every client when keys have no caps of their own.
ANONYMOUS_CLIENT = ""


class _Cap(NamedTuple):
    """What a verdict of ingest_admit names: the setting, its place in the caps, the field an
    error points at, and what it counts."""

    setting: str
    position: int
    field: str
    counts: str


_CAPS = {
    OVER_SERIES: _Cap("INGEST_MAX_SERIES", 0, "source", "distinct series"),
    OVER_METRICS: _Cap("INGEST_MAX_METRICS", 1, "metric", "distinct metric names"),
    OVER_CLIENT: _Cap("INGEST_MAX_SERIES_PER_KEY", 2, "source", "distinct series of this key"),
}
_REFUSED = {
    verdict: metrics.SERIES_REFUSED.labels(cap.setting.removeprefix("INGEST_").lower())
    for verdict, cap in _CAPS.items()
}


@dataclass(frozen=True, slots=True)
class Caps:
    """The caps in force (0: none), in ``ingest_admit``'s order."""

    series: int
    metrics: int
    per_key: int

    @classmethod
    def of(cls, settings: Settings) -> Caps:
        return cls(settings.max_series, settings.max_metrics, settings.max_series_per_key)

    def args(self) -> tuple[int, int, int]:
        return self.series, self.metrics, self.per_key


class Refusal(NamedTuple):
    """An event refused because its series would pass a cap."""

    at: int
    setting: str
    limit: int
    field: str
    message: str


class SeriesRegistry:
    """Admits new series under the caps; one per app, shared by every write route."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._redis = redis
        self._keys = settings.keys
        self.caps = Caps.of(settings)
        self._caps = self.caps.args()
        self.enabled = any(self._caps)
        # A key's own registry only where keys exist (without auth every client is one).
        self.per_client = settings.max_series_per_key > 0 and bool(settings.write_keys)
        # client -> metric -> the series names (:func:`_name`) seen admitted: nested, so the
        # hot path builds no tuple per event (~0.07 us per event against ~0.11).
        self._known: dict[str, dict[str, set[str]]] = {}
        self._known_count = 0

    def client_of(self, client_id: str, anonymous: str) -> str:
        """The registry's name for a request's client: its key's, when keys are capped."""
        if not self.per_client or client_id == anonymous:
            return ANONYMOUS_CLIENT
        return client_id

    def unknown(self, events: Sequence[EventOut], client: str) -> list[int]:
        """The indexes of ``events`` whose series this process has not seen admitted."""
        known = self._known.get(client)
        if known is None:
            return list(range(len(events)))
        get = known.get
        found = []
        for index, event in enumerate(events):
            names = get(event.metric)
            # Inlined for events without labels: a call per event costs ~40% more.
            name = event.source if event.labels is None else _name(event)
            if names is None or name not in names:
                found.append(index)
        return found

    async def admit(
        self, events: Sequence[EventOut], indexes: Sequence[int], client: str, *, whole: bool
    ) -> list[Refusal]:
        """Admit the series of ``events[i]`` for each of ``indexes``; returns the refusals.
        ``whole``: if one is refused, none is recorded (the request is refused as a whole)."""
        keys = self._keys
        members: dict[str, list[int]] = {}
        pairs: list[tuple[str, str]] = []
        seen: list[tuple[str, str]] = []
        for index in indexes:
            event = events[index]
            identity = event.source
            if event.labels is not None:
                digest = labels_digest(canonical_labels(event.labels))
                identity = series_identity(event.source, digest)
            member = keys.source_raw(event.metric, identity)
            if member not in members:
                members[member] = []
                pairs.append((event.metric, member))
                seen.append((event.metric, _name(event)))
            members[member].append(index)
        registry = [keys.registry_series, keys.registry_metrics]
        if client != ANONYMOUS_CLIENT:
            registry.append(keys.registry_client_series(client))
        admitted = await admit_series(self._redis, registry, self._caps, pairs, whole=whole)
        _export(admitted)
        refusals: list[Refusal] = []
        for (metric, member), verdict in zip(pairs, admitted.verdicts, strict=True):
            if verdict == ADMITTED:
                continue
            cap = _CAPS[verdict]
            limit = self._caps[cap.position]
            event = events[members[member][0]]
            message = (
                f"metric {metric!r} of source {event.source!r} would be a new series beyond "
                f"{cap.setting}={limit} ({cap.counts}); series that exist still take events"
            )
            _REFUSED[verdict].inc(len(members[member]))
            refusals.extend(
                Refusal(index, cap.setting, limit, cap.field, message) for index in members[member]
            )
        if not (refusals and whole):
            self._remember(
                client,
                (
                    key
                    for key, verdict in zip(seen, admitted.verdicts, strict=True)
                    if verdict == ADMITTED
                ),
            )
        return refusals

    def _remember(self, client: str, admitted: Iterable[tuple[str, str]]) -> None:
        if self._known_count >= KNOWN_LIMIT:
            self._known.clear()
            self._known_count = 0
        known = self._known.setdefault(client, {})
        for metric, name in admitted:
            names = known.setdefault(metric, set())
            if name not in names:
                names.add(name)
                self._known_count += 1

    async def seed(self) -> None:
        """Once per registry: record the series and metric names that exist already (data of a
        release without the registry, or a registry lost), so the caps count them."""
        if not self.enabled:
            return
        keys = self._keys
        if await call(self._redis, "EXISTS", keys.registry_seeded):
            return
        replies = await each_primary(
            self._redis, [("TS.QUERYINDEX", f"{LABEL_KIND}={KIND_SOURCE_RAW}")]
        )
        members = [name for (found,) in replies for name in found]
        for first in range(0, len(members), _SEED_CHUNK):
            chunk = members[first : first + _SEED_CHUNK]
            await call(self._redis, "SADD", keys.registry_series, *chunk)
        names = keys.registry_metrics
        await call(self._redis, "SUNIONSTORE", names, names, keys.metrics)
        await call(self._redis, "SET", keys.registry_seeded, "1")
        await self.refresh()

    async def refresh(self) -> None:
        """Export the registry's counts (also done by every admission)."""
        keys = self._keys
        series = await call(self._redis, "SCARD", keys.registry_series)
        names = await call(self._redis, "SCARD", keys.registry_metrics)
        _export(Admitted(series, names, 0, []))


def cardinality(caps: Caps, series: int, metrics: int) -> Cardinality:
    """What the summary shows of the registry (counted by SCARD) and its caps."""
    return Cardinality(series, caps.series or None, metrics, caps.metrics or None)


def _name(event: EventOut) -> str:
    """What names an event's series among its metric's in this process's memory: its source,
    and its label set's canonical JSON if it has one (a source never holds a newline)."""
    labels = event.labels
    if labels is None:
        return event.source
    return f"{event.source}\n{canonical_labels(labels).decode()}"


def _export(admitted: Admitted) -> None:
    metrics.REGISTRY_SERIES.set(admitted.series)
    metrics.REGISTRY_METRICS.set(admitted.metrics)
