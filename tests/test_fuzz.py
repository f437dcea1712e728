"""Malformed input to every command of the project: `launch/train.py`, `trainer.generate`,
`trainer.export` and `tui --once`.

Each case must end with a non-zero exit status (tui: also 0 where the dashboard's contract
tolerates what it read, corrupt lines counted), at most two lines on stderr besides DeepSpeed's own
log lines, no traceback, and nothing half-written where the command would write. Most cases run in
one process (tests/fuzz_driver.py: a rejected input costs milliseconds, a process seconds); a few
go through the real launcher, with real ranks. Running as root, this machine reads files whatever
their permission bits: an unreadable file is stood in for by a directory, a dangling symlink and a
path that does not exist.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import save_file

from tests.trainer.launcher import TINY, train
from testkit.paths import INSTRUCTION_DATA, REPO, TOKENIZER_DIR
from trainer.gpt2.fetch import sha256_file
from trainer.gpt2.model import GPT, preset, shape

# Bytes that are no instruction file, no config and no checkpoint, each in its own way.
MALFORMED = {
    "truncated-json": b'[{"instruction": "a", "output": "b"}, {"instru',
    "garbage-bytes": random.Random(123).randbytes(4096),
    "empty": b"",
    "whitespace": b"  \n\n \n",
    "json-number": b"42",
    "json-string": b'"entries"',
    "json-list-of-numbers": b"[1, 2, 3]",
    "wrong-field-type": b'[{"instruction": 1, "output": "b"}]',
    "null-output": b'[{"instruction": "a", "output": null}]',
    "jsonl-bad-line": b'{"instruction": "a", "output": "b"}\n{not json}\n',
    "several-mb-line": b'{"instruction": "' + b"x" * 6_000_000,
    "other-tool-json": b'{"name": "x", "version": "1.0.0", "dependencies": {}}',
    "yaml": b"model: gpt2\nlr: 5e-5\n",
    "utf16": '[{"instruction": "a", "output": "b"}]'.encode("utf-16"),
}
PATH_KINDS = ("directory", "dangling-symlink", "missing")
# DeepSpeed configs of the wrong shape or with values DeepSpeed rejects (another tool's JSON is a
# valid DeepSpeed config: DeepSpeed ignores keys it does not know).
BAD_DS = {
    "bf16-true": {"bf16": True},
    "zero-int": {"zero_optimization": 2},
    "stage-9": {"zero_optimization": {"stage": 9}},
    "bucket-text": {"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}},
    "top-level-list": [{"zero_optimization": {"stage": 2}}],
    "steps-text": {"steps_per_print": "x"},
    "clip-text": {"gradient_clipping": "high"},
    "micro-batch-fraction": {"train_micro_batch_size_per_gpu": 2.5},
    "breakdown-number": {"wall_clock_breakdown": 1},
}
# A run directory with a checkpoint, damaged in one file (None: the file deleted), for --resume (and
# the export, which reads the pointer only): {case: (the file, relative to the run directory, its bytes)}.
PROGRESS = "checkpoints/global_step2/progress.json"
DAMAGED_RUN = {
    "pointer-not-utf8": ("checkpoints/latest", b"\xff\xfeglobal_step2\n"),
    "progress-garbage": (PROGRESS, b"{oops"),
    "progress-missing": (PROGRESS, None),
    "progress-list": (PROGRESS, b"[1]"),
}
DEEPSPEED_OWN = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING)\]|^DeepSpeed .* built successfully$|^\s*$")


def make_input(folder: Path, name: str) -> Path:
    """A malformed input at folder/name (its bytes, or a path of a kind that cannot be read)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name == "directory":
        path.mkdir()
    elif name == "dangling-symlink":
        path.symlink_to(folder / "nowhere")
    elif name in MALFORMED:
        path.write_bytes(MALFORMED[name])
    return path  # "missing": nothing there


def tiny_pth(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "tiny.pth"
    torch.save(GPT(preset("tiny")).state_dict(), path)
    return path


def bad_weights(folder: Path) -> dict[str, Path]:
    """Checkpoint files that are not the tiny model: garbage, truncated, wrong shapes, another
    tool's config, a list instead of a state dict."""
    found = {name: make_input(folder / "weights", name) for name in (*PATH_KINDS, "garbage-bytes", "empty")}
    good = {k: v.contiguous() for k, v in GPT(preset("tiny")).state_dict().items() if k != "lm_head.weight"}
    (folder / "truncated").mkdir()
    save_file(good, folder / "truncated" / "model.safetensors")
    data = (folder / "truncated" / "model.safetensors").read_bytes()
    (folder / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    found["truncated-safetensors"] = folder / "truncated"
    (folder / "shapes").mkdir()
    save_file({**good, "transformer.wpe.weight": torch.zeros(7, 64)}, folder / "shapes" / "model.safetensors")
    found["wrong-shape"] = folder / "shapes" / "model.safetensors"
    (folder / "llama").mkdir()
    save_file(good, folder / "llama" / "model.safetensors")
    (folder / "llama" / "config.json").write_bytes(orjson.dumps({"model_type": "llama", "n_layer": 2}))
    found["other-tool-config"] = folder / "llama"
    torch.save([1, 2, 3], folder / "list.pth")
    found["list-pth"] = folder / "list.pth"
    return found


def damaged_run(run: Path, damage: str) -> Path:
    """A run of the tiny model that --resume accepts (the chapter's data, global batch 8), with a
    complete checkpoint at step 2, damaged as DAMAGED_RUN[damage] says."""
    (run / "checkpoints" / "global_step2").mkdir(parents=True)
    (run / "config.json").write_bytes(orjson.dumps({
        "v": 1, "model": "tiny", "architecture": shape(preset("tiny")), "config": {"global_batch": 8},
        "provenance": {"data": {"sha256": sha256_file(INSTRUCTION_DATA)}}, "ds_config": {"zero_optimization": {"stage": 2}},
    }))
    (run / "checkpoints" / "latest").write_text("global_step2\n")
    (run / PROGRESS).write_bytes(orjson.dumps({"step": 2, "epoch": 1, "batch_in_epoch": 2, "tokens_total": 900,
                                               "bad_steps_in_row": 0, "world_size": 1}))
    name, content = DAMAGED_RUN[damage]
    if content is None:
        (run / name).unlink()
    else:
        (run / name).write_bytes(content)
    return run


SECRET = "hunter2"  # a password in a URL: never printed


def train_cases(folder: Path) -> dict[str, list[str]]:
    base = {"--model": "tiny", "--weights": "none", "--data": str(INSTRUCTION_DATA),
            "--tokenizer-dir": str(TOKENIZER_DIR), "--out": str(folder / "run"), "--max-steps": "1"}

    def argv(**changed) -> list[str]:
        flags = {**base, **{f"--{k.replace('_', '-')}": v for k, v in changed.items()}}
        return [x for pair in flags.items() for x in pair]

    cases = {f"data-{n}": argv(data=str(make_input(folder / "data", n))) for n in (*MALFORMED, *PATH_KINDS)}
    for name in ("truncated-json", "garbage-bytes", "empty", "json-number", "yaml", "utf16", *PATH_KINDS):
        cases[f"ds-config-{name}"] = argv(ds_config=str(make_input(folder / "ds", name)))
    for name, content in BAD_DS.items():
        (folder / "ds" / f"{name}.json").write_bytes(orjson.dumps(content))
        cases[f"ds-config-{name}"] = argv(ds_config=str(folder / "ds" / f"{name}.json"))
    for name, path in bad_weights(folder / "w").items():
        cases[f"weights-{name}"] = argv(weights=str(path))
    (folder / "tok").mkdir()
    (folder / "tok" / "encoder.json").write_bytes(b"{}")
    (folder / "tok" / "vocab.bpe").write_bytes(b"#version: 0.2\n")
    cases["tokenizer-wrong-files"] = argv(tokenizer_dir=str(folder / "tok"))
    cases["tokenizer-a-file"] = argv(tokenizer_dir=str(INSTRUCTION_DATA))
    cases["tokenizer-missing"] = argv(tokenizer_dir=str(folder / "no-tokenizer"))
    cases["max-length-past-context"] = argv(max_length="4096")
    cases["expect-other-ranks"] = argv(expect_ranks="3")
    cases["judge-down-at-the-start"] = argv(judge_url="http://127.0.0.1:9")  # nobody listens on port 9
    cases["judge-url-with-credentials"] = argv(judge_url=f"http://user:{SECRET}@127.0.0.1:9")
    cases["judge-url-env-unset"] = argv(judge_url_env="GPT2_INSTRUCT_NO_SUCH_VARIABLE")
    cases["judge-url-and-judge-url-env"] = argv(judge_url="http://127.0.0.1:9", judge_url_env="HOME")
    for damage in DAMAGED_RUN:  # read while the run is placed: before its lock, run_start or any file
        cases[f"resume-{damage}"] = [*argv(out=str(damaged_run(folder / "runs" / damage, damage))), "--resume"]
    return cases


def generate_cases(folder: Path) -> dict[str, list[str]]:
    pth = tiny_pth(folder)
    base = ["--model", "tiny", "--tokenizer-dir", str(TOKENIZER_DIR), "--max-new-tokens", "2"]
    out = ["--out", str(folder / "answers.json")]
    # An entry's "output" is the reference answer, optional for generation; null, as for any
    # optional field of instruct/, is the same as leaving it out, and the answers keep it as given.
    cases = {f"file-{n}": ["--weights", str(pth), *base, "--file", str(make_input(folder / "files", n)), *out]
             for n in (*MALFORMED, *PATH_KINDS) if n != "null-output"}
    for name, path in bad_weights(folder / "w").items():
        cases[f"weights-{name}"] = ["--weights", str(path), *base, "Say hi."]
    good_file = folder / "entries.json"
    good_file.write_bytes(INSTRUCTION_DATA.read_bytes())
    (folder / "journal").mkdir()  # its own --out: a journal error would hide what the other cases do
    (folder / "journal" / "answers.partial.jsonl").write_bytes(b"garbage\n")
    cases["journal-garbage"] = ["--weights", str(pth), *base, "--file", str(good_file),
                                "--out", str(folder / "journal" / "answers.json")]
    return cases


def export_cases(folder: Path) -> dict[str, list[str]]:
    """Run directories of every broken kind."""
    cases = {f"run-{n}": [str(make_input(folder / "runs", n)), "--out", str(folder / "export")]
             for n in ("garbage-bytes", *PATH_KINDS)}
    for name, config in {"garbage-config": b"{oops", "old-config": b'{"config": {"model": "tiny"}}',
                         "good-config": None}.items():
        run = folder / name
        (run / "checkpoints" / "global_step2").mkdir(parents=True)
        (run / "config.json").write_bytes(config or orjson.dumps({"v": 1, "model": "tiny", "architecture": {
            "vocab_size": 50257, "context_length": 1024, "emb_dim": 64, "n_layers": 2, "n_heads": 4,
            "qkv_bias": True}}))
        (run / "checkpoints" / "latest").write_text("global_step2\n")
        (run / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"garbage")
        cases[f"run-{name}"] = [str(run), "--out", str(folder / "export")]
    no_pointer = folder / "no-pointer"
    (no_pointer / "checkpoints").mkdir(parents=True)
    (no_pointer / "config.json").write_bytes(b"{}")
    (no_pointer / "checkpoints" / "latest").write_bytes(random.Random(1).randbytes(64))
    cases["run-garbage-pointer"] = [str(no_pointer), "--out", str(folder / "export")]
    cases["run-pointer-not-utf8"] = [str(damaged_run(folder / "not-utf8", "pointer-not-utf8")),
                                     "--out", str(folder / "export")]
    return cases


def tui_cases(folder: Path) -> dict[str, list[str]]:
    cases = {f"path-{n}": [str(make_input(folder / "paths", n)), "--once"] for n in ("garbage-bytes", *PATH_KINDS)}
    for name in ("garbage-bytes", "several-mb-line", "utf16", "json-list-of-numbers"):
        run = folder / f"metrics-{name}"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_bytes(MALFORMED[name])
        (run / "ranks").mkdir()
        (run / "ranks" / "rank-0.jsonl").write_bytes(MALFORMED[name])
        cases[f"run-{name}"] = [str(run), "--once"]
    odd = folder / "odd-shapes"
    (odd / "metrics.jsonl").mkdir(parents=True)
    (odd / "ranks").write_bytes(b"a file")
    (odd / "x.summary.json").write_bytes(MALFORMED["garbage-bytes"])
    cases["run-odd-shapes"] = [str(odd), "--once"]
    return cases


COMMANDS = {"train": train_cases, "generate": generate_cases, "export": export_cases, "tui": tui_cases}
# The dashboard reads what it can (corrupt lines are counted, a run not started yet is `waiting`).
TOLERATED = {("tui", name) for name in ("path-directory", "run-garbage-bytes", "run-several-mb-line", "run-utf16",
                                        "run-json-list-of-numbers", "run-odd-shapes")}


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], tuple[dict, set[str], set[str]]]:
    """Every case's result, with the files of its folder before and after."""
    root = tmp_path_factory.mktemp("fuzz")
    cases, order = [], []
    for command, make in COMMANDS.items():
        folder = root / command
        folder.mkdir()
        for name, argv in make(folder).items():
            cases.append({"command": command, "argv": argv})
            order.append((command, name, folder))
    before = {folder: listing(folder) for _, _, folder in order}
    named = {(command, name): must_name(command, name, case["argv"])
             for (command, name, _), case in zip(order, cases, strict=True)}
    (root / "cases.json").write_bytes(orjson.dumps(cases))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_driver.py"), str(root / "cases.json"),
                           str(root / "results.json")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = orjson.loads((root / "results.json").read_bytes())
    return {(command, name): (result, before[folder], listing(folder), named[command, name])
            for (command, name, folder), result in zip(order, found, strict=True)}


def must_name(command: str, name: str, argv: list[str]) -> list[str]:
    """What a case's error line must name: the bad file (a bad DeepSpeed config's keys too)."""
    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    if command == "generate" and name.startswith("file-"):
        return [value("--file")]
    if command == "train" and name.startswith("ds-config-"):
        content = BAD_DS.get(name.removeprefix("ds-config-"))
        return [value("--ds-config"), *(content if isinstance(content, dict) else ())]
    if command == "train" and name.startswith("resume-"):
        return [str(Path(value("--out")) / DAMAGED_RUN[name.removeprefix("resume-")][0])]
    if command == "export" and name == "run-pointer-not-utf8":
        return [str(Path(argv[0]) / DAMAGED_RUN["pointer-not-utf8"][0])]
    return []


def problems_of(command: str, name: str, result: dict, before: set[str], after: set[str],
                named: list[str]) -> list[str]:
    own = [line for line in result["stderr"].splitlines() if not DEEPSPEED_OWN.match(line)]
    problems = []
    if "Traceback" in result["stderr"]:
        problems.append("a traceback: " + result["stderr"][-1500:])
    if SECRET in result["stdout"] + result["stderr"]:
        problems.append("a credential printed")
    if len(own) > 2:
        problems.append(f"{len(own)} lines on stderr: {own[:5]}")
    if (command, name) in TOLERATED:
        if result["code"] != 0:
            problems.append(f"exit {result['code']} for what the dashboard tolerates")
    elif not (isinstance(result["code"], int) and result["code"] != 0):
        problems.append(f"exit {result['code']}")
    elif not any(line.startswith(("error:", "python -m tui:", "usage:")) for line in own):
        problems.append(f"no one-line error: {own}")
    elif missing := [text for text in named if not any(text in line for line in own)]:
        problems.append(f"the error does not name {missing}: {own}")
    if after != before:
        problems.append(f"written: {sorted(after - before)[:5]}, removed: {sorted(before - after)[:5]}")
    return problems


def test_malformed_input_is_refused_in_one_line(results):
    failed = {f"{command} {name}": problems for (command, name), outcome in results.items()
              if (problems := problems_of(command, name, *outcome))}
    assert not failed, "\n".join(f"{case}: {'; '.join(problems)}" for case, problems in failed.items())
    assert len(results) > 80


# ---- a few through the real launcher, with 2 ranks ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zero-int", "expect-3", "bad-flag"])
def test_under_the_launcher_every_rank_stops_with_one_line(tmp_path, case):
    out = tmp_path / "run"
    extra = ["--expect-ranks", "3"]
    if case == "bad-flag":  # refused before the process group exists
        extra = ["--lr", "-1"]
    if case == "zero-int":
        (tmp_path / "ds.json").write_bytes(orjson.dumps({"zero_optimization": 2}))
        extra = ["--ds-config", str(tmp_path / "ds.json")]
    code, log = train([*TINY, "--out", str(out), *extra])
    assert code != 0 and "Traceback" not in log
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1, log[-3000:]
    assert not out.exists()
