"""The judge prompt: the chapter's template, or a custom one from `--prompt-file`.

A template is plain text with up to three placeholders, replaced in one pass (so braces in
the entries or elsewhere in the template are left alone):

    {input}     the Alpaca instruction block, `instruct.format_input(entry)`
    {output}    the entry's reference `output`
    {response}  the response being scored (required)
"""

from __future__ import annotations

import re
from pathlib import Path

from instruct import format_input

# Raschka, ch07/01_main-chapter-code (`generate_model_scores`), byte for byte.
CHAPTER_TEMPLATE = (
    "Given the input `{input}` "
    "and correct output `{output}`, "
    "score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)

_PLACEHOLDER = re.compile(r"\{(input|output|response)\}")


class TemplateError(ValueError):
    """A prompt template that cannot be used; the message is one line naming the file."""


def load_template(path: str | Path) -> str:
    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: cannot read prompt template ({e})") from None
    if "{response}" not in template:
        raise TemplateError(f"{path}: prompt template has no {{response}} placeholder")
    return template


def render(template: str, entry: dict, response: str) -> str:
    """The prompt for one entry's response."""
    values = {"input": format_input(entry), "output": entry["output"], "response": response}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
