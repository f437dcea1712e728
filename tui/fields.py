"""Fields of a parsed JSON object, read without trusting it: a malformed but parseable line or
file (a string where a number belongs, a missing key) gives None or a default, never a crash."""

from __future__ import annotations

NUMBER_TYPES = frozenset({int, float})


def is_number(value) -> bool:
    """int or float exactly: a JSON true/false (bool, a subclass of int) is not a number."""
    return value.__class__ is float or value.__class__ is int


def all_numbers(values) -> bool:
    return NUMBER_TYPES.issuperset(map(type, values))  # in C: the check runs per step


def number(event: dict, key: str) -> float | None:
    """A numeric field, or None when it is null, missing or not a number."""
    value = event.get(key)
    return float(value) if is_number(value) else None


def integer(event: dict, key: str) -> int | None:
    value = number(event, key)
    return int(value) if value is not None else None


def text_field(event: dict, key: str, default: str = "") -> str:
    value = event.get(key)
    return value if isinstance(value, str) else default


def object_field(event: dict, key: str) -> dict:
    """A nested object, or {} when it is null, missing or not an object."""
    value = event.get(key)
    return value if isinstance(value, dict) else {}
