"""Instruction entries: the Alpaca prompt and reading/validating entry files.

The prompt is the one of Raschka, *Build a Large Language Model (From Scratch)*, ch. 7
(`format_input` in ch07/01_main-chapter-code), byte for byte: the judge's prompt embeds it,
and the chapter's reported scores depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import orjson

# The section marks of the Alpaca prompt; the dashboard and the generation code find a prompt's
# parts by them, so each is written here once.
INSTRUCTION_MARK = "### Instruction:"
INPUT_MARK = "### Input:"
RESPONSE_MARK = "### Response:"
RESPONSE_HEADER = f"\n\n{RESPONSE_MARK}\n"


UTF8_BOM = b"\xef\xbb\xbf"
# Read in 1 MiB blocks: fewer reads of a large file and, measured in the judge, a lower CPU cost per
# request (freeing a buffer this size raises glibc's mmap threshold above asyncio's socket buffers).
READ_BUFFER = 1 << 20


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


def iter_entries(
    path: str | Path,
    required: Iterable[str] = ("instruction", "output"),
    optional: Iterable[str] = ("input",),
) -> Iterator[dict]:
    """The entries of a JSON list or JSONL file, each checked as it is read (see `read_entries`).

    A JSONL file is streamed a line at a time, so a million entries never sit in memory at once;
    a JSON list is parsed whole. An empty file yields nothing.
    """
    path = Path(path)
    required, optional = tuple(required), tuple(optional)
    try:
        with open(path, "rb", buffering=READ_BUFFER) as f:
            start = _skip_bom(f)
            first = _first_byte(f)
            f.seek(start)
            entries = _parse_list(path, f.read()) if first == b"[" else _parse_lines(path, f)
            for index, entry in enumerate(entries):
                _check_entry(path, index, entry, required, optional)
                yield entry
    except OSError as e:
        raise unreadable(path, e) from None


def is_json_list(path: str | Path) -> bool:
    """Whether the file is a JSON list (parsed whole) rather than JSONL (streamed)."""
    try:
        with open(path, "rb") as f:
            _skip_bom(f)
            return _first_byte(f) == b"["
    except OSError as e:
        raise unreadable(Path(path), e) from None


def _skip_bom(f: BinaryIO) -> int:
    """Past a UTF-8 byte order mark (files saved on Windows start with one); where the text starts."""
    start = len(UTF8_BOM) if f.read(len(UTF8_BOM)) == UTF8_BOM else 0
    f.seek(start)
    return start


def unreadable(path: Path, error: OSError) -> EntryError:
    """The one-line error for an instruction file that cannot be read."""
    if isinstance(error, FileNotFoundError):
        return EntryError(f"{path}: file not found")
    if isinstance(error, IsADirectoryError):
        return EntryError(f"{path}: is a directory, not an instruction file")
    return EntryError(f"{path}: cannot read ({error.strerror})")


def _first_byte(f: BinaryIO) -> bytes:
    """The first byte that is not whitespace (b"" when there is none)."""
    while chunk := f.read(1 << 16):
        if stripped := chunk.lstrip():
            return stripped[:1]
    return b""


def _parse_list(path: Path, raw: bytes) -> list:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise EntryError(f"{path}: not valid JSON ({e})") from None


def _parse_lines(path: Path, f: BinaryIO) -> Iterator:
    """JSONL: one value per non-empty line. Lines end as bytes.splitlines ends them (\n, \r, \r\n)."""
    line_number = 0
    for physical in f:
        for line in physical.splitlines():
            line_number += 1
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise EntryError(f"{path}: line {line_number} is not valid JSON ({e})") from None


def _check_entry(path: Path, index: int, entry, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """`required` fields must be strings; `optional` fields, where present, must be strings or null."""
    if not isinstance(entry, dict):
        raise EntryError(f"{path}: entry {index}: expected an object, got {type(entry).__name__}")
    for field in required:
        if field not in entry:
            raise EntryError(f"{path}: entry {index}: missing field '{field}'")
        if not isinstance(entry[field], str):
            raise EntryError(
                f"{path}: entry {index}: field '{field}' must be a string, got {type(entry[field]).__name__}"
            )
    for field in optional:
        if field in entry and entry[field] is not None and not isinstance(entry[field], str):
            raise EntryError(
                f"{path}: entry {index}: field '{field}' must be a string, got {type(entry[field]).__name__}"
            )


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
    entries = list(iter_entries(path, required, optional))
    if not entries:
        raise no_entries(path)
    return entries


def no_entries(path: str | Path) -> EntryError:
    """The one-line error for an instruction file with no entry (a stream found empty at its end)."""
    return EntryError(f"{path}: holds no entries")
