"""The Alpaca-style instruction format shared by the trainer, the judge and the dashboard.

Everything here is plain Python (no torch), so the judge and the dashboard can use it on a
machine without the GPU stack. It is the only code the three parts share; they otherwise meet
through the documented files in docs/.
"""

from instruct.entries import (
    EntryError,
    format_input,
    format_prompt,
    is_json_list,
    iter_entries,
    no_entries,
    read_entries,
    unreadable,
    INPUT_MARK,
    INSTRUCTION_MARK,
    RESPONSE_HEADER,
    RESPONSE_MARK,
)
from instruct.files import atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text
from instruct.urls import redact_url

__all__ = [
    "EntryError",
    "format_input",
    "format_prompt",
    "is_json_list",
    "iter_entries",
    "no_entries",
    "read_entries",
    "unreadable",
    "INPUT_MARK",
    "INSTRUCTION_MARK",
    "RESPONSE_HEADER",
    "RESPONSE_MARK",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "redact_url",
]
