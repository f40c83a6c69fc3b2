"""Dead letters: list them, replay the ones that are valid now, delete, purge by age.

Replay re-validates each payload with the worker's own rules (the event schema and the time
window), then moves the valid ones back to the stream through the ``ingest_replay`` function:
per entry, the append and the delete happen together or not at all, so a dropped connection
or two concurrent replays of the same ids neither lose nor duplicate an entry.

With stream shards each shard has its own dead-letter stream, and two of them can hold the same
id: ids are then qualified by their shard, ``<ms>-<seq>@<shard>``, lists merge every shard
(newest first: by id, then shard), and each action goes to the shard its id names. With one
shard ids stay plain stream ids.
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
from ingest_shared.messages import field_first
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms, sample_from_entry

if TYPE_CHECKING:
    from ingest_producer.reading.context import ReadContext
    from ingest_shared.schema import TimeWindow

# Entries as XRANGE returns them; with the index of the shard they were read from.
Letter = tuple[bytes, dict[bytes, bytes]]
ShardLetter = tuple[int, Letter]
# Letters that pass validation, by shard index: (dead-letter id, the stream fields to replay).
_Valid = dict[int, list[tuple[str, dict[str, str]]]]
# Dead letters moved per function call: bounds how long one call holds Redis. Replay-all
# also reads them this many at a time.
REPLAY_CHUNK = 500
# Replay-all skips at most this many dead letters it cannot replay: the answer lists each.
MAX_SKIPPED = 10_000
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


def _letter(letter_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=letter_id,
        messageId=_text(fields, k.DL_MESSAGE_ID),
        reason=_text(fields, k.DL_REASON),
        payload=_payload(_text(fields, k.DL_PAYLOAD)),
        consumer=_text(fields, k.DL_CONSUMER),
        failedAt=_text(fields, k.DL_FAILED_AT),
    )


def _public_id(ctx: ReadContext, entry_id: bytes | str, index: int) -> str:
    """The id the API shows: the stream id, qualified by its shard when there are several."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return text if len(ctx.keys.shards) == 1 else f"{text}@{index}"


def _order(entry_id: bytes, index: int) -> tuple[int, int, int]:
    """Where a dead letter sorts among every shard's: by id, then by shard."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq), index


def _is_zero(letter_id: str) -> bool:
    return not any(int(part) for part in letter_id.split("-"))


async def list_dead_letters(ctx: ReadContext, count: int, before: str | None) -> DeadLetterPage:
    """Up to ``count`` dead letters older than ``before`` (exclusive), newest first."""
    shards = ctx.keys.shards
    cursor = None if before is None else params.dead_letter_cursor(before, len(shards))
    pipe = ctx.redis.pipeline(transaction=False)
    asked: list[int] = []
    for shard in shards:
        if cursor is None:
            end = "+"
        elif shard.index < cursor[1]:
            end = cursor[0]  # the same id in a lower shard sorts older: inclusive
        elif _is_zero(cursor[0]):
            # Nothing is older than 0-0, and Redis refuses a range that ends before it.
            continue
        else:
            end = "(" + cursor[0]
        pipe.execute_command("XREVRANGE", shard.dead_letter, end, "-", "COUNT", count + 1)
        asked.append(shard.index)
    if not asked:
        return DeadLetterPage([], None)
    replies: list[list[Letter]] = await pipe.execute()
    found = [
        (index, entry_id, fields)
        for index, reply in zip(asked, replies, strict=True)
        for entry_id, fields in reply
    ]
    if len(asked) > 1:
        found.sort(key=lambda letter: _order(letter[1], letter[0]), reverse=True)
    page = [_letter(_public_id(ctx, entry_id, index), fields) for index, entry_id, fields in found]
    page = page[:count]
    return DeadLetterPage(page, page[-1].id if len(found) > count else None)


def replayable(
    entry_id: bytes, fields: dict[bytes, bytes], window: TimeWindow, now: int
) -> dict[str, str]:
    """The stream fields to replay a dead letter with, or InvalidEventError saying why not.

    The payload's own source, metric, value and occurredAt are kept as they were; a missing
    or empty occurredAt becomes the time the worker would have used (the original entry's id
    time).
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
    occurred = k.FIELD_OCCURRED_AT.decode()
    if not stream_fields.get(occurred):  # empty too: left unstamped by an older append function
        stream_fields[occurred] = format_ms(sample.timestamp_ms)
    return stream_fields


async def _letters_by_id(
    ctx: ReadContext, ids: list[tuple[str, int]]
) -> tuple[list[ShardLetter], list[str]]:
    """The dead letters named by (id, shard index), and the public ids of those not there."""
    shards = ctx.keys.shards
    pipe = ctx.redis.pipeline(transaction=False)
    for letter_id, index in ids:
        pipe.xrange(shards[index].dead_letter, letter_id, letter_id)
    found: list[ShardLetter] = []
    missing: list[str] = []
    for (letter_id, index), reply in zip(ids, await pipe.execute(), strict=True):
        if reply:
            found.append((index, reply[0]))
        else:
            missing.append(_public_id(ctx, letter_id, index))
    return found, missing


async def _oldest(ctx: ReadContext, count: int, after: tuple[str, int] | None) -> list[ShardLetter]:
    """The oldest ``count`` dead letters of every shard (by id, then shard) after ``after``
    (exclusive; None: from the first)."""
    shards = ctx.keys.shards
    pipe = ctx.redis.pipeline(transaction=False)
    for shard in shards:
        if after is None:
            start = "-"
        elif shard.index > after[1]:
            start = after[0]  # the same id in a higher shard sorts newer: inclusive
        else:
            # Ids have at most 19 digits a part (params), so one always comes after it.
            start = "(" + after[0]
        pipe.xrange(shard.dead_letter, start, "+", count)
    replies: list[list[Letter]] = await pipe.execute()
    found = [
        (shard.index, letter)
        for shard, reply in zip(shards, replies, strict=True)
        for letter in reply
    ]
    if len(shards) > 1:
        found.sort(key=lambda item: _order(item[1][0], item[0]))
    return found[:count]


async def replay(
    ctx: ReadContext, request: ReplayRequest, after: str | None = None
) -> ReplayResult:
    """Replay the dead letters ``request`` names, or (``all``) up to ``max`` of the oldest ones
    after ``after`` (a dead-letter id, exclusive; ignored with ``ids``): see
    :func:`_replay_oldest`."""
    if request.ids is not None and request.all:
        raise params.invalid("all", "give either `ids` or `all`, not both")
    shards = ctx.keys.shards
    start = None if after is None else params.dead_letter_id(after, len(shards), "after")
    if request.ids is not None:
        named = (params.dead_letter_id(i, len(shards), "ids") for i in request.ids)
        letters, missing = await _letters_by_id(ctx, list(dict.fromkeys(named)))
        now = now_ms()
        valid: _Valid = {}
        still_invalid: list[StillInvalid] = []
        for letter in letters:
            _sort_out(ctx, letter, now, valid, still_invalid)
        replayed, gone = await _move(ctx, valid)
        return ReplayResult(replayed, still_invalid, missing + gone)
    if request.all:
        return await _replay_oldest(ctx, int(request.max), start)
    raise params.invalid("ids", "give `ids` (dead-letter ids) or `all: true`")


async def _replay_oldest(
    ctx: ReadContext, most: int, after: tuple[str, int] | None
) -> ReplayResult:
    """Replay up to ``most`` dead letters, oldest first, skipping the ones still invalid.

    Reads REPLAY_CHUNK at a time, so invalid letters at the head never hide the valid ones
    behind them; each one skipped is listed in ``still_invalid`` with its reason. Stops once
    ``most`` are replayed, every dead letter was looked at, or MAX_SKIPPED were skipped (this
    bounds one call's work and answer; the last ``still_invalid`` id, passed as ``after``, goes
    on from there).
    """
    now = now_ms()
    replayed = 0
    still_invalid: list[StillInvalid] = []
    missing: list[str] = []
    while replayed < most and len(still_invalid) < MAX_SKIPPED:
        letters = await _oldest(ctx, REPLAY_CHUNK, after)
        valid: _Valid = {}
        wanted = most - replayed
        for letter in letters:
            if wanted == 0 or len(still_invalid) == MAX_SKIPPED:
                break
            after = (letter[1][0].decode(), letter[0])
            wanted -= _sort_out(ctx, letter, now, valid, still_invalid)
        moved, gone = await _move(ctx, valid)
        replayed += moved
        missing += gone
        if len(letters) < REPLAY_CHUNK:
            break
    return ReplayResult(replayed, still_invalid, missing)


def _sort_out(
    ctx: ReadContext, letter: ShardLetter, now: int, valid: _Valid, invalid: list[StillInvalid]
) -> int:
    """Add ``letter`` to ``valid`` (its shard's list; returns 1) or to ``invalid`` with the
    reason it fails now (returns 0)."""
    index, (entry_id, fields) = letter
    try:
        fields_now = replayable(entry_id, fields, ctx.window, now)
    except InvalidEventError as exc:
        reason = field_first(exc.reason, exc.field)
        invalid.append(StillInvalid(_public_id(ctx, entry_id, index), reason))
        return 0
    valid.setdefault(index, []).append((entry_id.decode(), fields_now))
    return 1


async def _move(ctx: ReadContext, valid: _Valid) -> tuple[int, list[str]]:
    """Move ``valid`` letters back to their shard's stream: (how many moved, the public ids of
    those no longer there)."""
    shards = ctx.keys.shards
    replayed = 0
    missing: list[str] = []
    for index, shard_letters in valid.items():
        for first in range(0, len(shard_letters), REPLAY_CHUNK):
            chunk = shard_letters[first : first + REPLAY_CHUNK]
            outcome = await replay_dead_letters(ctx.redis, shards[index], chunk)
            replayed += len(outcome.moved)
            missing += [_public_id(ctx, gone, index) for gone in outcome.missing]
    return replayed, missing


async def delete(ctx: ReadContext, letter_id: str) -> Deleted:
    """Delete one dead letter; 404 when it is not there."""
    plain, index = params.dead_letter_id(letter_id, len(ctx.keys.shards))
    deleted = int(await call(ctx.redis, "XDEL", ctx.keys.shards[index].dead_letter, plain))
    if not deleted:
        raise NotFoundException(f"no dead letter {letter_id}")
    return Deleted(deleted)


async def purge(ctx: ReadContext, older_than_ms: int) -> Deleted:
    """Delete every dead letter (of every shard) whose id time is more than ``older_than_ms``
    ago."""
    cutoff = max(0, now_ms() - older_than_ms)
    pipe = ctx.redis.pipeline(transaction=False)
    for shard in ctx.keys.shards:
        pipe.execute_command("XTRIM", shard.dead_letter, "MINID", cutoff)
    return Deleted(sum(int(deleted) for deleted in await pipe.execute()))
