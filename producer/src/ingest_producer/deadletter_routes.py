"""The dead-letter routes: list (read), replay, delete and purge (write). Thin: the work is
in ``reading.deadletters``.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

from typing import Annotated, Any

import msgspec
from litestar import HttpMethod, Request, Response, delete, get, post, route
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from ingest_producer.auth import ACCESS_OPT, Access
from ingest_producer.errors import error_responses
from ingest_producer.jsonbody import decode_json, require_json
from ingest_producer.models import (
    DeadLetterPage,
    Deleted,
    ReplayRequest,
    ReplayResult,
    ShardedReplayRequest,
)
from ingest_producer.openapi import ParameterOperation, json_body_operation
from ingest_producer.reading import deadletters, params
from ingest_producer.reading.context import ReadContext
from ingest_producer.reading.isolation import ReadGuard, read_responses

_REPLAY_DOC = (
    '`{"ids": [dead-letter ids]}` (at most 10000) or `{"all": true, "max": n}` (up to n of '
    "the oldest that are valid now, default 1000, at most 10000)."
)
# Exactly one of the two (else 422): what deadletters.replay checks.
_REPLAY_CONSTRAINTS = {
    "oneOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["all"], "properties": {"all": {"const": True}}},
    ]
}


def dead_letter_routes(
    ctx: ReadContext, guard: ReadGuard, *, type_required: bool = False
) -> list[HTTPRouteHandler]:
    """The dead-letter routes, bound to their collaborators (the list reads in one of
    ``guard``'s slots). With several stream shards their ids are qualified by shard
    (``<id>@<shard>``), and the document says so. ``type_required``: a replay without a
    Content-Type is refused (415)."""
    shards = len(ctx.keys.shards)
    body = ReplayRequest if shards == 1 else ShardedReplayRequest
    replay_decoder = msgspec.json.Decoder(body)
    replay_body = json_body_operation(body, _REPLAY_DOC, constraints=_REPLAY_CONSTRAINTS)
    # Documented only: reading.params checks ids, and says what is wrong in words.
    id_doc = {"schema_extra": {"pattern": params.dead_letter_pattern(shards)}}
    cursor_doc = {"schema_extra": {"pattern": params.dead_letter_pattern(shards, cursor=True)}}

    @get(
        "/api/ingest/dead-letters",
        responses=read_responses(401, 403, 422, 500, 503),
        opt={ACCESS_OPT: Access.READ},
        operation_class=ParameterOperation,
        tags=["dead letters"],
        summary="Dead letters, newest first, with the reason each failed",
        description=(
            "`payload` is the original entry's fields (an object) when it is JSON. Page with "
            "`before` = the previous page's `next`."
        ),
    )
    async def list_dead_letters(
        count: Annotated[int, Parameter(ge=1, le=1000, description="How many")] = 20,
        before: Annotated[
            str | None,
            Parameter(description="Only dead letters older than this id (exclusive)", **cursor_doc),
        ] = None,
    ) -> DeadLetterPage:
        await guard.paced("dead-letters")
        return await guard.limited(
            "dead-letters", lambda: deadletters.list_dead_letters(ctx, count, before)
        )

    @post(
        "/api/ingest/dead-letters/replay",
        status_code=200,
        operation_class=replay_body,
        responses=error_responses(400, 401, 403, 413, 415, 422, 500, 503),
        opt={ACCESS_OPT: Access.WRITE},
        tags=["dead letters"],
        summary="Re-validate dead letters and move the valid ones back to the stream",
        description=(
            "Each payload is checked again with the event schema and the time window. A valid "
            "one is appended to the stream and removed from the dead letters in one atomic "
            "step (a retry or a concurrent call with the same ids moves it once); an invalid "
            "one stays, listed in `still_invalid` with its current reason (starting with the "
            "field it is about); ids not found are listed in `missing`. `all` goes through the "
            "dead letters from the oldest (or from just after `after`), skips each one still "
            "invalid (listed in `still_invalid`) and goes on until `max` are replayed, every "
            f"dead letter was looked at, or {deadletters.MAX_SKIPPED} were skipped; then the "
            "last `still_invalid` id, as `after`, continues from there."
        ),
    )
    async def replay(
        request: Request[Any, Any, Any],
        after: Annotated[
            str | None,
            Parameter(
                description=(
                    "With `all`: start after this dead-letter id (exclusive), e.g. the last "
                    "`still_invalid` id of the previous call (ignored with `ids`)"
                ),
                **id_doc,
            ),
        ] = None,
    ) -> ReplayResult:
        require_json(request.scope, required=type_required)
        job = decode_json(await request.body(), replay_decoder)
        return await deadletters.replay(ctx, job, after)

    @delete(
        "/api/ingest/dead-letters/{letter_id:str}",
        status_code=200,
        responses=error_responses(401, 403, 404, 422, 500, 503),
        opt={ACCESS_OPT: Access.WRITE},
        operation_class=ParameterOperation,
        tags=["dead letters"],
        summary="Delete one dead letter (404 when it is not there)",
    )
    async def delete_dead_letter(
        letter_id: Annotated[str, Parameter(description="Dead-letter id", **id_doc)],
    ) -> Deleted:
        return await deadletters.delete(ctx, letter_id)

    @delete(
        "/api/ingest/dead-letters",
        status_code=200,
        responses=error_responses(401, 403, 422, 500, 503),
        opt={ACCESS_OPT: Access.WRITE},
        operation_class=ParameterOperation,
        tags=["dead letters"],
        summary="Delete every dead letter older than `olderThanMs`",
    )
    async def purge_dead_letters(
        # Named as in the query string so that validation errors name it so.
        olderThanMs: Annotated[  # noqa: N803
            int,
            Parameter(
                ge=0,
                description="Delete dead letters whose id time is more than this many ms ago",
            ),
        ],
    ) -> Deleted:
        return await deadletters.purge(ctx, olderThanMs)

    allow = ", ".join(sorted({*list_dead_letters.http_methods, *purge_dead_letters.http_methods}))

    # Litestar 2.25 answers OPTIONS on a path from the handler registered there first, so
    # `Allow` would name GET only; an OPTIONS handler registered before both names both.
    @route("/api/ingest/dead-letters", http_method=HttpMethod.OPTIONS, include_in_schema=False)
    async def dead_letters_options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": f"{allow}, OPTIONS"})

    return [dead_letters_options, list_dead_letters, replay, delete_dead_letter, purge_dead_letters]
