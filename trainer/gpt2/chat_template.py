"""The Alpaca prompt as chat apps write it: a Jinja chat template (in the GGUF) and an Ollama Modelfile.

A model fine-tuned on the chapter's prompt answers garbage when a chat app wraps the user's words
in its own default format, so the prompt travels with the model. Both templates turn a chat into
the text the model was trained on:

- a user message is an instruction: `format_prompt({"instruction": message})`, the response header
  included. An entry's input goes in the same message, after the instruction, as the prompt lays
  it out (a blank line, `### Input:`, the input), so every entry's prompt can be sent as it is;
- an assistant message is a response, ended by <|endoftext|> as every training example ends;
- system messages are left out: the model knows only the chapter's fixed preamble.

The texts around the message come from instruct/'s `format_prompt`, so a change of the prompt
changes the templates with it (tests/trainer/test_gguf.py renders both and compares byte for byte).
"""

from __future__ import annotations

import json

from instruct import INSTRUCTION_MARK, format_prompt
from trainer.gpt2.generation import GenerationSettings
from trainer.gpt2.model import GPTConfig
from trainer.gpt2.tokenizer import ENDOFTEXT

# format_prompt's text before and after the instruction: the preamble and the instruction mark,
# then the response header.
_SLOT = "\x00"
BEFORE_MESSAGE, AFTER_MESSAGE = format_prompt({"instruction": _SLOT}).split(_SLOT)

# llama.cpp and LM Studio render it with `messages` and `eos_token` (<|endoftext|> here). The
# prompt's texts are Jinja string literals, so no whitespace control of a tag can eat their
# newlines; the template's own line breaks are all eaten by the tags' "-".
JINJA_TEMPLATE = "\n".join([
    "{%- for message in messages -%}",
    "{%- if message['role'] == 'user' -%}",
    "{{ " + json.dumps(BEFORE_MESSAGE) + " }}{{ message['content'] }}{{ " + json.dumps(AFTER_MESSAGE) + " }}",
    "{%- elif message['role'] == 'assistant' -%}",
    "{{ message['content'] }}{{ eos_token }}",
    "{%- endif -%}",
    "{%- endfor -%}",
])

# Ollama's Go template. Without `.Messages` Ollama renders each earlier turn with its `.Response`
# filled in, and the last one up to `.Response`: the same text as the Jinja template.
OLLAMA_TEMPLATE = BEFORE_MESSAGE + "{{ .Prompt }}" + AFTER_MESSAGE + "{{ .Response }}" + ENDOFTEXT

# Where an answer ends: the end of a training example, or the model starting the next instruction.
STOP_STRINGS = (ENDOFTEXT, INSTRUCTION_MARK)


def modelfile(gguf_name: str, config: GPTConfig) -> str:
    """An Ollama Modelfile for the GGUF beside it: the prompt, the stops, the model's context and
    the chapter's generation (greedy, 256 new tokens, no repetition penalty)."""
    chapter = GenerationSettings()
    lines = [
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        *(f'PARAMETER stop "{stop}"' for stop in STOP_STRINGS),
        f"PARAMETER num_ctx {config.context_length}",
        f"PARAMETER num_predict {chapter.max_new_tokens}",
        f"PARAMETER temperature {chapter.temperature:g}",
        # Ollama's default repeat_penalty (1.1) would make its answers other than greedy ones.
        "PARAMETER repeat_penalty 1",
    ]
    return "\n".join(lines) + "\n"
