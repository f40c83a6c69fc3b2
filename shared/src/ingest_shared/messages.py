"""Validation errors in words: what a field must be, never the regex or bound behind it.

msgspec says ``Expected `str` matching regex '\\A[A-Za-z0-9_.\\-]+\\Z'``; a client should read
that the metric must be 1 to 128 characters: letters, digits, `_ . -`. The rule is worded from
the field's own type constraints (``msgspec.Meta``), so the words cannot drift from what is
enforced. Error path only: nothing here runs for a valid request.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

__all__ = ["describe", "field_first", "plain", "split_location"]

# msgspec appends the location of the failing value: "Expected `float`, got `str` - at `$.value`"
_AT_PATH = re.compile(r"\A(?P<message>.*?) - at `\$\.?(?P<path>[^`]*)`\Z", re.DOTALL)
_TYPE_MISMATCH = re.compile(r"\AExpected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`\Z")
# The name patterns of the schema: \A, one character class, + or {m,n}, \Z.
_CHAR_CLASS = re.compile(r"\A\\A\[(?P<chars>[^\]]+)\](?:\+|\{(?P<low>\d+),(?P<high>\d+)\})\\Z\Z")
_RANGES = (("A-Za-z", "letters"), ("a-zA-Z", "letters"), ("0-9", "digits"))
# JSON's names for what msgspec calls Python types, with an article.
_JSON_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
    "datetime": "an RFC 3339 date-time",
}
_MAX_FLOAT = 1.7976931348623157e308


def split_location(message: str) -> tuple[str | None, str]:
    """(field path or None, message) of a msgspec error, its ``- at `$.path``` removed."""
    match = _AT_PATH.match(message)
    if match is None:
        return None, message
    return match["path"] or None, match["message"]


def describe(annotation: Any, message: str) -> str:
    """``message`` (msgspec's, location removed) about a value of type ``annotation``, in words.

    Constraint failures become the field's rule; type mismatches the rule and what was sent.
    """
    mismatch = _TYPE_MISMATCH.match(message)
    try:
        rule = _rule(mi.type_info(annotation))
    except (TypeError, ValueError):  # not a type msgspec knows: keep its message
        rule = None
    if mismatch is not None:
        got = _JSON_NAMES.get(mismatch["got"], f"`{mismatch['got']}`")
        expected = rule or f"must be {_expected(mismatch['expected'])}"
        return f"{expected}, got {got}"
    return rule or message


def _expected(types: str) -> str:
    return " or ".join(_JSON_NAMES.get(t.strip(), f"`{t.strip()}`") for t in types.split("|"))


def _rule(info: mi.Type) -> str | None:
    """What a value of this type must be, or None if there is nothing to add to msgspec's."""
    if isinstance(info, mi.Metadata):  # Meta that only documents (extra_json_schema)
        return _rule(info.type)
    if isinstance(info, mi.UnionType):
        rules = [_rule(t) for t in info.types if not isinstance(t, mi.NoneType)]
        return rules[0] if len(rules) == 1 else None
    if isinstance(info, mi.StrType):
        return _str_rule(info)
    if isinstance(info, mi.FloatType | mi.IntType):
        return _number_rule(info)
    if isinstance(info, mi.ListType | mi.DictType):
        return _sized_rule(info)
    return _OTHER_RULES.get(type(info))


_OTHER_RULES: dict[type[mi.Type], str] = {
    mi.DateTimeType: "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z",
    mi.StructType: "must be a JSON object",
    mi.DictType: "must be a JSON object",
    mi.ListType: "must be a JSON array",
}


def _sized_rule(info: mi.ListType | mi.DictType) -> str:
    """An array or object, with the number of items or entries it may hold, if limited."""
    what = _OTHER_RULES[type(info)]
    low, high = info.min_length, info.max_length
    one, many = ("item", "items") if isinstance(info, mi.ListType) else ("entry", "entries")
    if low is not None and high is not None:
        return f"{what} of {low} to {high} {many}"
    if high is not None:
        return f"{what} of at most {high} {one if high == 1 else many}"
    if low is not None:
        return f"{what} of at least {low} {one if low == 1 else many}"
    return what


def _number_rule(info: mi.FloatType | mi.IntType) -> str:
    if isinstance(info, mi.FloatType) and (info.ge, info.le) == (-_MAX_FLOAT, _MAX_FLOAT):
        return "must be a finite number"  # the bounds only keep out NaN and Infinity
    # A float that must be a multiple of 1 takes integral numbers (482 and 482.0) only.
    integral = isinstance(info, mi.IntType) or info.multiple_of == 1
    what = "an integer" if integral else "a number"
    return _bounds(what, info.ge, info.le)


def _bounds(what: str, low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"must be {what} from {low:g} to {high:g}"
    if low is not None:
        return f"must be {what} of at least {low:g}"
    if high is not None:
        return f"must be {what} of at most {high:g}"
    return f"must be {what}"


def _str_rule(info: mi.StrType) -> str:
    low, high, chars = info.min_length, info.max_length, None
    if info.pattern is not None:
        match = _CHAR_CLASS.match(info.pattern)
        if match is None:
            return "must be a string in the documented format"
        chars = _char_class_words(match["chars"])
        if match["low"] is not None:
            low, high = int(match["low"]), int(match["high"])
    if low is not None and high is not None:
        size = f"{low}\u2013{high} characters"  # an en dash: a range, not a minus
    elif high is not None:
        size = f"at most {high} characters"
    else:
        size = f"at least {low or 1} characters" if chars or low else "a string"
    return f"must be {size}: {chars}" if chars else f"must be {size}"


def _char_class_words(chars: str) -> str:
    """``A-Za-z0-9_.\\-`` -> ``letters, digits, `_ . -```."""
    words: list[str] = []
    for pattern, word in _RANGES:
        if pattern in chars:
            chars = chars.replace(pattern, "")
            if word not in words:
                words.append(word)
    symbols = [c for c in chars.replace("\\", "") if c]
    if symbols:
        words.append(f"`{' '.join(symbols)}`")
    return ", ".join(words)


def plain(message: str) -> str:
    """A message about a whole body or event, in words (``must be an array, got an object``)."""
    return describe(msgspec.Raw, message)


def field_first(reason: str, field: str | None) -> str:
    """``reason`` starting with the field it is about (``occurredAt: is more than ...``): as
    it is when it already does, or when it is about no one field (``field`` None)."""
    if field is None or reason.startswith((f"{field}: ", f"{field} ")):
        return reason
    return f"{field}: {reason}"
