"""Dead letters: list them, replay the ones that are valid now, delete, purge by age.

Replay re-validates each payload with the worker's own rules (the event schema and the time
window), then moves the valid ones back to the stream through the ``ingest_replay`` function:
per entry, the append and the delete happen together or not at all, so a dropped connection
or two concurrent replays of the same ids neither lose nor duplicate an entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import NotFoundException

from ingest_producer.models import (
    DeadLetter,
    DeadLetterPage,
    Deleted,
    ReplayRequest,
    ReplayResult,
    StillInvalid,
)
from ingest_producer.reading import params
from ingest_shared import keys as k
from ingest_shared.exceptions import InvalidEventError
from ingest_shared.functions import replay_dead_letters
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms, sample_from_entry

if TYPE_CHECKING:
    from ingest_producer.reading.context import ReadContext
    from ingest_shared.schema import TimeWindow

# Entries as XRANGE returns them.
Letter = tuple[bytes, dict[bytes, bytes]]
# Dead letters moved per function call: bounds how long one call holds Redis.
REPLAY_CHUNK = 500
_PAYLOAD_FIELDS = (k.FIELD_SOURCE, k.FIELD_METRIC, k.FIELD_VALUE, k.FIELD_OCCURRED_AT)
_JSON = msgspec.json.Decoder()


def _text(fields: dict[bytes, bytes], name: str) -> str | None:
    value = fields.get(name.encode())
    return None if value is None else value.decode(errors="replace")


def _payload(raw: str | None) -> dict[str, Any] | str | None:
    """The payload as an object when it is a JSON object, else as stored."""
    if raw is None:
        return None
    try:
        decoded = _JSON.decode(raw)
    except msgspec.DecodeError:
        return raw
    return decoded if isinstance(decoded, dict) else raw


def _letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(),
        messageId=_text(fields, k.DL_MESSAGE_ID),
        reason=_text(fields, k.DL_REASON),
        payload=_payload(_text(fields, k.DL_PAYLOAD)),
        consumer=_text(fields, k.DL_CONSUMER),
        failedAt=_text(fields, k.DL_FAILED_AT),
    )


async def list_dead_letters(ctx: ReadContext, count: int, before: str | None) -> DeadLetterPage:
    """Up to ``count`` dead letters older than ``before`` (exclusive), newest first."""
    end = "+" if before is None else "(" + params.stream_id(before, "before")
    if end != "+" and not any(int(part) for part in end[1:].split("-")):
        # Nothing is older than 0-0, and Redis refuses a range that ends before it.
        return DeadLetterPage([], None)
    entries: list[Letter] = await call(
        ctx.redis, "XREVRANGE", ctx.keys.dead_letter, end, "-", "COUNT", count + 1
    )
    page = [_letter(entry_id, fields) for entry_id, fields in entries[:count]]
    return DeadLetterPage(page, page[-1].id if len(entries) > count else None)


def replayable(
    entry_id: bytes, fields: dict[bytes, bytes], window: TimeWindow, now: int
) -> dict[str, str]:
    """The stream fields to replay a dead letter with, or InvalidEventError saying why not.

    The payload's own source, metric, value and occurredAt are kept as they were; a missing
    occurredAt becomes the time the worker would have used (the original entry's id time).
    """
    payload = _payload(_text(fields, k.DL_PAYLOAD))
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        msg = "the payload is not a JSON object of strings"
        raise InvalidEventError(msg)
    names = [name.decode() for name in _PAYLOAD_FIELDS]
    stream_fields = {name: payload[name] for name in names if name in payload}
    original = _text(fields, k.DL_MESSAGE_ID) or ""
    fallback_id = original if params.STREAM_ID.match(original) else entry_id.decode()
    sample = sample_from_entry(
        fallback_id.encode(),
        {name.encode(): value.encode() for name, value in stream_fields.items()},
        window,
        now,
    )
    stream_fields.setdefault(k.FIELD_OCCURRED_AT.decode(), format_ms(sample.timestamp_ms))
    return stream_fields


async def _letters_by_id(ctx: ReadContext, ids: list[str]) -> tuple[list[Letter], list[str]]:
    pipe = ctx.redis.pipeline(transaction=False)
    for letter_id in ids:
        pipe.xrange(ctx.keys.dead_letter, letter_id, letter_id)
    found: list[Letter] = []
    missing: list[str] = []
    for letter_id, reply in zip(ids, await pipe.execute(), strict=True):
        if reply:
            found.append(reply[0])
        else:
            missing.append(letter_id)
    return found, missing


async def replay(ctx: ReadContext, request: ReplayRequest) -> ReplayResult:
    """Replay the dead letters ``request`` names (or the oldest ``max``)."""
    if request.ids is not None and request.all:
        raise params.invalid("all", "give either `ids` or `all`, not both")
    if request.ids is not None:
        ids = list(dict.fromkeys(params.stream_id(i, "ids") for i in request.ids))
        letters, missing = await _letters_by_id(ctx, ids)
    elif request.all:
        letters = await call(
            ctx.redis, "XRANGE", ctx.keys.dead_letter, "-", "+", "COUNT", request.max
        )
        missing = []
    else:
        raise params.invalid("ids", "give `ids` (dead-letter ids) or `all: true`")
    now = now_ms()
    valid: list[tuple[str, dict[str, str]]] = []
    still_invalid: list[StillInvalid] = []
    for entry_id, fields in letters:
        try:
            valid.append((entry_id.decode(), replayable(entry_id, fields, ctx.window, now)))
        except InvalidEventError as exc:
            still_invalid.append(StillInvalid(entry_id.decode(), exc.reason))
    replayed = 0
    for first in range(0, len(valid), REPLAY_CHUNK):
        chunk = valid[first : first + REPLAY_CHUNK]
        outcome = await replay_dead_letters(ctx.redis, ctx.keys, chunk)
        replayed += len(outcome.moved)
        missing += outcome.missing
    return ReplayResult(replayed, still_invalid, missing)


async def delete(ctx: ReadContext, letter_id: str) -> Deleted:
    """Delete one dead letter; 404 when it is not there."""
    letter_id = params.stream_id(letter_id)
    deleted = int(await call(ctx.redis, "XDEL", ctx.keys.dead_letter, letter_id))
    if not deleted:
        raise NotFoundException(f"no dead letter {letter_id}")
    return Deleted(deleted)


async def purge(ctx: ReadContext, older_than_ms: int) -> Deleted:
    """Delete every dead letter whose id time is more than ``older_than_ms`` ago."""
    cutoff = max(0, now_ms() - older_than_ms)
    deleted = await call(ctx.redis, "XTRIM", ctx.keys.dead_letter, "MINID", cutoff)
    return Deleted(int(deleted))
