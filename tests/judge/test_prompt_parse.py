"""The chapter's prompt byte for byte, custom templates, and what counts as a score."""

import pytest

from judge.parse import parse_score
from judge.prompt import CHAPTER_TEMPLATE, TemplateError, load_template, render


def chapter_prompt(entry: dict, json_key: str) -> str:
    """Copied from Raschka, ch07/01_main-chapter-code/ch07.ipynb (`generate_model_scores`),
    with its `format_input`, so the judge's template is compared with the original code."""

    def format_input(entry):
        instruction_text = (
            f"Below is an instruction that describes a task. "
            f"Write a response that appropriately completes the request."
            f"\n\n### Instruction:\n{entry['instruction']}"
        )
        input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
        return instruction_text + input_text

    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[json_key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def test_chapter_prompt_byte_for_byte(responses_data):
    from instruct import read_entries

    entries = read_entries(responses_data, required=("instruction", "output", "model_response"))
    assert len(entries) == 110
    for entry in entries:
        assert render(CHAPTER_TEMPLATE, entry, entry["model_response"]) == chapter_prompt(entry, "model_response")


def test_custom_template_replaces_placeholders_once(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text('Q: {input}\nRef: {output}\nA: {response}\nJSON like {"score": 1} stays.')
    entry = {"instruction": "Say {output}", "input": "", "output": "{response}"}
    prompt = render(load_template(path), entry, "resp {input}")
    assert prompt == (
        "Q: Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay {output}\n"
        'Ref: {response}\nA: resp {input}\nJSON like {"score": 1} stays.'
    )


def test_template_without_response_is_refused(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Score {output}")
    with pytest.raises(TemplateError, match=r"prompt.txt: prompt template has no \{response\}"):
        load_template(path)


@pytest.mark.parametrize(
    "reply, structured, score",
    [
        ("85", False, 85),
        (" 100\n", False, 100),
        ("0", False, 0),
        ("101", False, None),
        ("85.5", False, None),
        ("85/100", False, None),
        ("Score: 85", False, None),
        ("-3", False, None),
        ("", False, None),
        ('{"score": 42}', True, 42),
        ('{ "score": 1000}', True, None),
        ('{"score": 42.0}', True, None),
        ('{"score": true}', True, None),
        ('{"score": "42"}', True, None),
        ("42", True, None),
        ('{ "score": 5000000000', True, None),
    ],
)
def test_parse_score(reply, structured, score):
    assert parse_score(reply, structured) == score
