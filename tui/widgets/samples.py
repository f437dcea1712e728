"""Samples panel: the validation prompt's instruction and the latest greedy responses, newest
first, one per eval."""

from __future__ import annotations

from rich.text import Text

from instruct import INPUT_MARK, INSTRUCTION_MARK, RESPONSE_HEADER
from tui.state import RunState
from tui.widgets.base import TextPanel


def samples_text(prompt: str, samples: list[tuple[int | None, str]]) -> Text:
    if not samples:
        return Text("no sample yet (one per eval)", style="dim")
    # The prompt is the whole Alpaca template: show only the instruction (and input) part.
    body = prompt.split(f"{INSTRUCTION_MARK}\n", 1)[-1].split(RESPONSE_HEADER.rstrip("\n"), 1)[0].strip()
    text = Text()
    text.append("prompt ", style="bold dim")
    text.append(body.replace(f"\n\n{INPUT_MARK}\n", " | ") + "\n")
    for step, response in reversed(samples):
        text.append(f"step {step if step is not None else '?'} ", style="bold cyan")
        text.append((response.strip() or "(empty)") + "\n")
    text.rstrip()
    return text


class SamplesPanel(TextPanel):
    def text(self, state: RunState) -> Text:
        return samples_text(state.sample_prompt, list(state.samples))
