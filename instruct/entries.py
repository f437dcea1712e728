"""Instruction entries: the Alpaca prompt and reading/validating entry files.

The prompt is the one of Raschka, *Build a Large Language Model (From Scratch)*, ch. 7
(`format_input` in ch07/01_main-chapter-code), byte for byte: the judge's prompt embeds it,
and the chapter's reported scores depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import orjson

# The section marks of the Alpaca prompt; the dashboard and the generation code find a prompt's
# parts by them, so each is written here once.
INSTRUCTION_MARK = "### Instruction:"
INPUT_MARK = "### Input:"
RESPONSE_MARK = "### Response:"
RESPONSE_HEADER = f"\n\n{RESPONSE_MARK}\n"


UTF8_BOM = b"\xef\xbb\xbf"


class EntryError(ValueError):
    """A bad instruction file. The message is one line naming the file, entry and field."""


def format_input(entry: dict) -> str:
    """The instruction and (when non-empty) input block of the Alpaca prompt, as the chapter."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n{INSTRUCTION_MARK}\n{entry['instruction']}"
    )
    input_text = f"\n\n{INPUT_MARK}\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def format_prompt(entry: dict) -> str:
    """The prompt a model answers: the input block followed by the response header."""
    return format_input(entry) + RESPONSE_HEADER


def _parse(path: Path, raw: bytes) -> list:
    """A JSON list, or JSONL (one object per non-empty line)."""
    stripped = raw.lstrip()
    if stripped[:1] == b"[":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise EntryError(f"{path}: not valid JSON ({e})") from None
        return data
    entries = []
    for line_number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise EntryError(f"{path}: line {line_number} is not valid JSON ({e})") from None
    if not entries and stripped[:1] not in (b"{", b""):
        raise EntryError(f"{path}: not a JSON list or JSONL file")
    return entries


def read_entries(
    path: str | Path,
    required: Iterable[str] = ("instruction", "output"),
    optional: Iterable[str] = ("input",),
) -> list[dict]:
    """Read a JSON list or JSONL file of entries and check every one.

    `required` fields must be strings; `optional` fields, where present, must be strings too.
    Nothing is dropped silently: the first bad entry stops the read with an EntryError whose
    message names the file, the entry index (0-based) and the field.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().removeprefix(UTF8_BOM)  # files saved on Windows start with one
    except FileNotFoundError:
        raise EntryError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise EntryError(f"{path}: is a directory, not an instruction file") from None
    except OSError as e:
        raise EntryError(f"{path}: cannot read ({e.strerror})") from None
    entries = _parse(path, raw)
    if not isinstance(entries, list):
        raise EntryError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise EntryError(f"{path}: holds no entries")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise EntryError(f"{path}: entry {index}: expected an object, got {type(entry).__name__}")
        for field in required:
            if field not in entry:
                raise EntryError(f"{path}: entry {index}: missing field '{field}'")
            if not isinstance(entry[field], str):
                raise EntryError(
                    f"{path}: entry {index}: field '{field}' must be a string, "
                    f"got {type(entry[field]).__name__}"
                )
        for field in optional:
            if field in entry and entry[field] is not None and not isinstance(entry[field], str):
                raise EntryError(
                    f"{path}: entry {index}: field '{field}' must be a string, "
                    f"got {type(entry[field]).__name__}"
                )
    return entries
