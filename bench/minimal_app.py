"""The HTTP ceiling: the least a Litestar route can do with one telemetry event.

One POST route decodes the body into a msgspec Struct with the producer's field types and
constraints, and answers 200 with a tiny JSON body: no Redis, no logging, no middleware.
Serve it exactly like the producer (one uvicorn process, uvloop + httptools, no access log):

    uvicorn bench.minimal_app:app --no-access-log --log-level warning
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - msgspec resolves the annotation at runtime
from typing import Annotated

import msgspec
from litestar import Litestar, post

_MAX_FLOAT = 1.7976931348623157e308

Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[A-Za-z0-9_.\-]+\Z")]
Source = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[A-Za-z0-9_.:@/\-]+\Z")
]
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]


class Event(msgspec.Struct, frozen=True, gc=False):
    """The same fields and types as the producer's event schema."""

    source: Source
    metric: Metric
    value: FiniteFloat
    occurredAt: dt.datetime | None = None


class Accepted(msgspec.Struct, frozen=True, gc=False):
    accepted: bool
    metric: str


@post("/api/ingest/events", status_code=200, sync_to_thread=False)
def ingest(data: Event) -> Accepted:
    return Accepted(accepted=True, metric=data.metric)


app = Litestar(route_handlers=[ingest], openapi_config=None)
