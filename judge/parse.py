"""Reading a score out of the judge's reply.

The chapter converts the reply with `int(reply)`; here the reply must be an integer 0..100
(surrounding whitespace allowed), or with `--structured` a JSON object `{"score": <int 0..100>}`.
Anything else is not a score: the caller retries once and then records the raw reply as
unparseable. A reply is never coerced into a number ("85/100", "85.5", "eighty" are not scores).
"""

from __future__ import annotations

import re

import orjson

_INTEGER = re.compile(r"\s*(\d{1,3})\s*")


def parse_score(reply: str, structured: bool) -> int | None:
    """The score 0..100 in `reply`, or None when the reply holds no valid score."""
    if structured:
        try:
            obj = orjson.loads(reply)
        except orjson.JSONDecodeError:
            return None
        value = obj.get("score") if isinstance(obj, dict) else None
        if type(value) is not int:  # not bool, not float
            return None
    else:
        match = _INTEGER.fullmatch(reply)
        if match is None:
            return None
        value = int(match.group(1))
    return value if 0 <= value <= 100 else None
