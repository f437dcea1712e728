"""Project-level promises: the README's commands, the parts' independence, the layout's rules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from testkit.paths import REPO


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("pip install torch")]


def test_ci_runs_the_readme_test_command_word_for_word():
    main_command, test_command = readme_commands()[:2]
    assert main_command.endswith("deepspeed launch/train.py")
    assert test_command.endswith("python -m pytest -q")
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_judge_and_dashboard_import_neither_the_gpu_stack_nor_each_other():
    for modules, forbidden in [
        ("judge.cli, judge.scorer", {"torch", "deepspeed", "tiktoken", "trainer", "tui"}),
        ("tui.app, tui.once", {"torch", "deepspeed", "tiktoken", "trainer", "judge"}),
    ]:
        code = f"import sys, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {forbidden!r}))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", (modules, out.stdout)


def test_the_gpt2_library_needs_no_deepspeed():
    """trainer/gpt2/ names DeepSpeed nowhere, not even inside a function, and every module of it
    imports (and `python -m trainer.generate --help` runs) where DeepSpeed cannot be imported."""
    library = sorted((REPO / "trainer" / "gpt2").glob("*.py"))
    for path in library:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] == "deepspeed" for name in names), f"{path.name} imports {names}"
    modules = ", ".join(f"trainer.gpt2.{p.stem}" for p in library if p.stem != "__init__")
    block = "import sys; sys.modules['deepspeed'] = None"  # `import deepspeed` raises ImportError
    code = f"{block}; import {modules}; import runpy; sys.argv = ['generate', '--help']; runpy.run_module('trainer.generate', run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "--weights" in out.stdout, out.stderr


def test_no_function_in_the_trainer_is_longer_than_80_lines():
    long = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long


def test_tests_and_benchmarks_do_not_import_each_other():
    for folder, forbidden in (("tests", "bench"), ("bench", "tests")):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert node.module.split(".")[0] != forbidden, f"{path} imports {node.module}"
                if isinstance(node, ast.Import):
                    assert all(a.name.split(".")[0] != forbidden for a in node.names), path


def test_the_architecture_page_names_files_that_exist():
    page = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:trainer|tui|judge|instruct|launch|testkit|tests|bench)/[\w/]*\.py)`", page))
    assert len(named) > 20
    assert sorted(path for path in named if not (REPO / path).is_file()) == []


# What stands for a value in docs/errors.md's example messages: elisions, paths and file names,
# placeholders, numbers, quoted keys, dotted names, parenthesised details, DeepSpeed's own words.
EXAMPLE_VALUES = re.compile(r"\.\.\.|\S*/\S*|\S*\.(?:jsonl?|bpe|pth)\b|\b(?:DIR|FILE|PATH|OUT|CACHE|KEY|URL|NAME|RUN_DIR)\b"
                            r"|GPT-2|gpt2-[\w-]+|\d+|node1|Input should be .*|(?<!\w)'[^']*'|\w+\.\w+|\([^)]*\)")


def message_templates() -> tuple[str, list[re.Pattern]]:
    """The code's strings, and its f-strings as patterns (each value a wildcard)."""
    strings, patterns = [], []
    for folder in ("trainer", "launch", "tui", "judge", "instruct"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.append(node.value)
                elif isinstance(node, ast.JoinedStr):
                    parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".+?" for v in node.values]
                    if sum(len(v.value) for v in node.values if isinstance(v, ast.Constant)) >= 12:
                        patterns.append(re.compile("".join(parts)))
    return "\n".join(strings), patterns


def test_the_errors_page_quotes_messages_the_code_has():
    """Each clause of each message docs/errors.md quotes holds an f-string of the code with the
    example's values, or else its stretches of fixed words begin as strings of the code do; README
    links the page."""
    strings, patterns = message_templates()
    quoted, unknown = 0, []
    for row in (REPO / "docs" / "errors.md").read_text().splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if not row.startswith("|") or len(cells) < 3 or set(cells[0]) <= set("-") or cells[1] == "the line says":
            continue
        for message in re.findall(r"`([^`]+)`", cells[1]):
            quoted += 1
            for clause in message.split("; "):
                if any(pattern.search(clause) for pattern in patterns):
                    continue
                for words in EXAMPLE_VALUES.split(clause):
                    words = words.strip(" :,;.[]")
                    if len(words) >= 12 and words[:12] not in strings:
                        unknown.append(f"{words!r} of {message!r}")
    assert quoted > 40 and unknown == []
    assert "(docs/errors.md)" in (REPO / "README.md").read_text()
