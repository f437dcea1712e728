"""Batched KV-cache generation against the chapter's full recomputation, and the CLI.

The oracle is `generate_recompute`: one prompt, no cache, the whole sequence fed for every new
token, as the chapter does. Random tiny models (seeded) on CPU; token-for-token comparisons run
in float64 so that no near-tie of two logits can flip an argmax.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import torch

from instruct import format_input
from testkit.compilation import compiled_graphs
from trainer.generate import file_identity, journal_path
from trainer.generate import main as generate_main
from trainer.gpt2.fetch import sha256_file
from trainer.gpt2.journal import ResponseJournal
from trainer.gpt2.generation import GenerationSettings as Settings
from trainer.gpt2.generation import extract_response, generate, generate_recompute, generate_responses
from trainer.gpt2.model import GPT, preset
from trainer.gpt2.precision import native_bf16
from trainer.gpt2.tokenizer import get_tokenizer
from trainer.gpt2.weights import load_model

PROMPT_LENGTHS = (3, 17, 40, 8, 25)
NO_EOS = -1  # an id no token has: rows run to max_new_tokens


def tiny_model(dtype=torch.float64, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("tiny", **overrides)).to(dtype).eval()


def random_prompts(lengths, seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50256, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def model64() -> GPT:
    return tiny_model()


def record_calls(module: torch.nn.Module, record):
    """A forward hook that calls record(inputs, output) for every call of `module`."""
    return module.register_forward_hook(lambda _module, inputs, output: record(inputs, output))


def test_batched_greedy_equals_recompute(model64):
    prompts = random_prompts(PROMPT_LENGTHS)
    batched = generate(model64, prompts, Settings(max_new_tokens=20), eos_id=NO_EOS)
    for prompt, tokens in zip(prompts, batched):
        assert len(tokens) == 20
        assert tokens == generate_recompute(model64, prompt, Settings(max_new_tokens=20), eos_id=NO_EOS)


def test_cached_logits_match_recompute_float32():
    model = tiny_model(torch.float32)
    prompts = random_prompts(PROMPT_LENGTHS)
    step_logits = []  # the logits each step picks from: the last position of each forward
    handle = record_calls(model, lambda _inputs, logits: step_logits.append(logits[:, -1].clone()))
    try:
        outputs = generate(model, prompts, Settings(max_new_tokens=12), eos_id=NO_EOS)
    finally:
        handle.remove()
    assert len(step_logits) == 12  # one prefill and 11 decode steps (the 12th token is not fed)
    with torch.no_grad():
        for row, (prompt, tokens) in enumerate(zip(prompts, outputs)):
            # Causal attention: position L-1+s of the full sequence sees exactly what step s saw.
            full = model(torch.tensor([prompt + tokens]))[0]
            for step in range(len(tokens)):
                torch.testing.assert_close(step_logits[step][row], full[len(prompt) - 1 + step], atol=1e-4, rtol=0)


def test_decode_steps_feed_one_token_per_row(model64):
    prompts = random_prompts(PROMPT_LENGTHS)
    shapes, masks = [], []
    handles = [
        record_calls(model64.transformer.wte, lambda inputs, _out: shapes.append(tuple(inputs[0].shape))),
        model64.transformer.h[0].attn.register_forward_pre_hook(
            lambda _module, _args, kwargs: masks.append(kwargs["attn_mask"]), with_kwargs=True
        ),
    ]
    try:
        generate(model64, prompts, Settings(max_new_tokens=6), eos_id=NO_EOS)
    finally:
        for handle in handles:
            handle.remove()
    assert shapes == [(5, 40)] + [(5, 1)] * 5
    # The cache has 40 + 6 - 1 slots; every decode step attends over all of them (fixed shapes),
    # masked to the row's real tokens so far.
    assert [tuple(mask.shape) for mask in masks] == [(5, 1, 40, 45)] + [(5, 1, 1, 45)] * 5
    for step, mask in enumerate(masks[1:]):
        for row, length in enumerate(PROMPT_LENGTHS):
            expected = [40 - length <= slot <= 40 + step for slot in range(45)]
            assert mask[row, 0, 0].tolist() == expected
    # Every query, pads included, attends to something: no 0/0 softmax row (NaN in some kernels).
    assert all(bool(mask.any(dim=-1).all()) for mask in masks)


def test_eos_stops_rows_and_the_loop(model64):
    prompts = random_prompts(PROMPT_LENGTHS)
    free = generate(model64, prompts, Settings(max_new_tokens=20), eos_id=NO_EOS)
    # Make "eos" a token row 0 emits at step k (for the first time), so row 0 must stop there.
    k = next(s for s in range(3, 20) if free[0][s] not in free[0][:s])
    eos = free[0][k]
    stopped = generate(model64, prompts, Settings(max_new_tokens=20), eos_id=eos)
    assert stopped[0] == free[0][:k]
    for prompt, row_free, row in zip(prompts, free, stopped):
        expected = row_free[: row_free.index(eos)] if eos in row_free else row_free
        assert row == expected
        assert row == generate_recompute(model64, prompt, Settings(max_new_tokens=20), eos_id=eos)
    # Alone, row 0 is done after k decode steps: the loop stops without running to 20.
    calls = []
    handle = record_calls(model64, lambda inputs, _out: calls.append(inputs[0].shape))
    try:
        assert generate(model64, prompts[:1], Settings(max_new_tokens=20), eos_id=eos) == [free[0][:k]]
    finally:
        handle.remove()
    assert len(calls) == 1 + k


def test_never_past_the_context_length():
    model = tiny_model(context_length=32)
    prompts = random_prompts((28, 40, 5, 31))
    positions_seen = []
    handle = record_calls(model.transformer.wpe, lambda inputs, _out: positions_seen.append(int(inputs[0].max())))
    try:
        outputs = generate(model, prompts, Settings(max_new_tokens=20), eos_id=NO_EOS)
    finally:
        handle.remove()
    # Prompt plus new tokens fill the context at most; a prompt longer than 31 is cut from the left.
    assert [len(tokens) for tokens in outputs] == [4, 1, 20, 1]
    assert max(positions_seen) <= 31
    assert outputs[1] == generate(model, [prompts[1][-31:]], Settings(max_new_tokens=20), eos_id=NO_EOS)[0]
    for prompt, tokens in zip(prompts, outputs):
        assert tokens == generate_recompute(model, prompt, Settings(max_new_tokens=20), eos_id=NO_EOS)


def test_top_k_1_sampling_equals_greedy(model64):
    prompts = random_prompts(PROMPT_LENGTHS)
    greedy = generate(model64, prompts, Settings(max_new_tokens=10), eos_id=NO_EOS)
    sampled = generate(model64, prompts, Settings(max_new_tokens=10, temperature=1.0, top_k=1), eos_id=NO_EOS,
                       generator=torch.Generator().manual_seed(5))
    assert sampled == greedy


SAMPLING = Settings(max_new_tokens=10, temperature=1.5, top_k=50)


def test_seeded_sampling_is_reproducible(model64):
    prompts = random_prompts(PROMPT_LENGTHS)

    def sample(seed):
        return generate(model64, prompts, SAMPLING, eos_id=NO_EOS, generator=torch.Generator().manual_seed(seed))

    assert sample(123) == sample(123)
    assert sample(123) != sample(124)
    # One prompt draws the same random numbers in the same order with or without the cache.
    alone = generate_recompute(model64, prompts[2], SAMPLING, eos_id=NO_EOS, generator=torch.Generator().manual_seed(7))
    batched = generate(model64, prompts[2:3], SAMPLING, eos_id=NO_EOS, generator=torch.Generator().manual_seed(7))
    assert batched == [alone]


@pytest.mark.slow  # compiles the tiny model's decode step (about 10 s on 2 cores)
def test_compiled_decode_step_gives_the_eager_tokens_without_recompiling(model64):
    """compile=True: the same greedy tokens as eager, and one graph for every call whose batch
    size and cache length (rounded up to a power of two) are the same, whatever the prompt widths
    and however many steps; fixed shapes are also what CUDA graphs need on a GPU."""
    torch._dynamo.reset()  # forget graphs earlier tests compiled (the counter keeps counting)
    prompts = random_prompts(PROMPT_LENGTHS)
    eager = generate(model64, prompts, Settings(max_new_tokens=12), eos_id=NO_EOS)
    before = compiled_graphs()
    assert generate(model64, prompts, Settings(max_new_tokens=12, compile=True), eos_id=NO_EOS) == eager
    assert compiled_graphs() == before + 1
    # Widths 40 and 33 with 12 and 20 new tokens: caches of 51 and 52 slots, both 64 when compiled.
    others = random_prompts((33, 9, 20, 30, 2), seed=2)
    compiled = generate(model64, others, Settings(max_new_tokens=20, compile=True), eos_id=NO_EOS)
    assert compiled == generate(model64, others, Settings(max_new_tokens=20), eos_id=NO_EOS)
    assert compiled_graphs() == before + 1


@pytest.mark.slow
def test_compiled_decode_step_on_a_model_compiled_in_place():
    """The trainer's --compile compiles the model in place (dynamic shapes) and then generates the
    test responses with compile=True: the compiled step traces through it."""
    torch._dynamo.reset()
    model = tiny_model(torch.float32)
    prompts = random_prompts(PROMPT_LENGTHS)
    eager = generate(model, prompts, Settings(max_new_tokens=8), eos_id=NO_EOS)
    model.compile(dynamic=True)
    assert generate(model, prompts, Settings(max_new_tokens=8, compile=True), eos_id=NO_EOS) == eager


def test_extract_response_as_the_chapter():
    prompt = "Below is an instruction.\n\n### Instruction:\nSay hi."
    generated = prompt + "\n\n### Response:\n  Hi there.\n"
    assert extract_response(generated, prompt) == "Hi there."


def test_generate_responses_in_input_order(model64, tokenizer_dir, instruction_data):
    tokenizer = get_tokenizer(tokenizer_dir)
    entries = json.loads(instruction_data.read_text())[:5]
    progress = []
    responses = generate_responses(model64, tokenizer, entries, Settings(batch_size=2, max_new_tokens=8),
                                   on_batch=lambda *a: progress.append(a))
    assert progress == [(2, 5), (4, 5), (5, 5)]
    for entry, response in zip(entries, responses):
        # The chapter's loop: prompt = format_input(entry), decode the whole sequence, cut the prompt.
        input_text = format_input(entry)
        prompt = tokenizer.encode(input_text, allowed_special={"<|endoftext|>"})
        tokens = generate_recompute(model64, prompt, Settings(max_new_tokens=8))
        assert response == extract_response(tokenizer.decode(prompt + tokens), input_text)
    assert any(responses)


# --- python -m trainer.generate ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    """A tiny model's weights as `torch.save(model.state_dict())` writes them."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(tiny_model(torch.float32).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cli_model(tiny_pth):
    """The model and tokenizer the CLI runs with, loaded the same way, for expected responses."""
    model, _ = load_model("tiny", str(tiny_pth))
    return model


def run_cli(tiny_pth, tokenizer_dir, *args, stdin=None):
    command = [sys.executable, "-m", "trainer.generate", "--weights", str(tiny_pth), "--model", "tiny"]
    command += ["--tokenizer-dir", str(tokenizer_dir), *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)


def expected_responses(model, tokenizer_dir, entries, **settings):
    return generate_responses(model, get_tokenizer(tokenizer_dir), entries, Settings(**settings))


def test_cli_answers_one_instruction(tiny_pth, cli_model, tokenizer_dir):
    proc = run_cli(tiny_pth, tokenizer_dir, "Name a fruit.", "--input", "red", "--max-new-tokens", 8)
    assert proc.returncode == 0, proc.stderr
    [expected] = expected_responses(cli_model, tokenizer_dir, [{"instruction": "Name a fruit.", "input": "red"}], max_new_tokens=8)
    assert expected and proc.stdout == expected + "\n"


def test_cli_bf16_answers_as_the_bf16_model(tiny_pth, cli_model, tokenizer_dir):
    """--precision bf16 generates with bf16 weights (so a bf16 cache)."""
    proc = run_cli(tiny_pth, tokenizer_dir, "Name a fruit.", "--max-new-tokens", 8, "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr
    bf16 = copy.deepcopy(cli_model).to(torch.bfloat16)
    [expected] = expected_responses(bf16, tokenizer_dir, [{"instruction": "Name a fruit."}], max_new_tokens=8)
    assert expected and proc.stdout == expected + "\n"


@pytest.mark.slow  # compiles the decode step (about 10 s)
def test_cli_compile_answers_as_eager(tiny_pth, cli_model, tokenizer_dir):
    proc = run_cli(tiny_pth, tokenizer_dir, "Name a fruit.", "--max-new-tokens", 8, "--compile")
    assert proc.returncode == 0, proc.stderr
    [expected] = expected_responses(cli_model, tokenizer_dir, [{"instruction": "Name a fruit."}], max_new_tokens=8)
    assert expected and proc.stdout == expected + "\n"


def test_cli_prompt_loop_until_quit(tiny_pth, cli_model, tokenizer_dir):
    proc = run_cli(tiny_pth, tokenizer_dir, "--max-new-tokens", 5, stdin="Say one.\n\nSay two.\nquit\nSay three.\n")
    assert proc.returncode == 0, proc.stderr
    one, two = expected_responses(
        cli_model, tokenizer_dir, [{"instruction": "Say one."}, {"instruction": "Say two."}], max_new_tokens=5
    )
    prompt = "Instruction: "
    assert proc.stdout == f"{prompt}{one}\n{prompt}{prompt}{two}\n{prompt}"


@pytest.fixture
def instruction_file(tmp_path, instruction_data):
    entries = json.loads(instruction_data.read_text())[:7]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))  # JSONL this time
    return path, entries


def test_cli_answers_a_file(tiny_pth, cli_model, tokenizer_dir, instruction_file, tmp_path):
    path, entries = instruction_file
    out = tmp_path / "out.json"
    proc = run_cli(tiny_pth, tokenizer_dir, "--file", path, "--out", out, "--batch-size", 3, "--max-new-tokens", 6)
    assert proc.returncode == 0, proc.stderr
    responses = expected_responses(cli_model, tokenizer_dir, entries, batch_size=3, max_new_tokens=6)
    expected = [{**entry, "model_response": response} for entry, response in zip(entries, responses)]
    assert out.read_text() == json.dumps(expected, indent=4)  # the chapter's json.dump(..., indent=4)
    assert not journal_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.json"]


def cli_journal(tiny_pth, path, out, **settings) -> ResponseJournal:
    """The journal the CLI keeps for these flags (greedy, seed 123, fp32 on this CPU)."""
    args = SimpleNamespace(file=path, seed=123)
    identity = file_identity(args, Settings(**settings), sha256_file(tiny_pth), "fp32")
    return ResponseJournal(journal_path(out), identity)


def test_cli_resumes_from_the_journal(tiny_pth, cli_model, tokenizer_dir, instruction_file, tmp_path):
    path, entries = instruction_file
    out = tmp_path / "out.json"
    # Entries 0 and 4 finished before a crash, which cut the record of entry 2 short.
    with cli_journal(tiny_pth, path, out, batch_size=2, max_new_tokens=6) as journal:
        journal.append([0, 4], ["from the journal 0", "from the journal 4"])
    journal.path.write_bytes(journal.path.read_bytes() + b'{"index":2,"respo')
    proc = run_cli(tiny_pth, tokenizer_dir, "--file", path, "--out", out, "--batch-size", 2, "--max-new-tokens", 6)
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 2 of 7 entries already answered" in proc.stderr
    pending = [0, 1, 2, 3, 4, 5, 6]
    pending.remove(0), pending.remove(4)
    generated = expected_responses(cli_model, tokenizer_dir, [entries[i] for i in pending], batch_size=2, max_new_tokens=6)
    responses = dict(zip(pending, generated)) | {0: "from the journal 0", 4: "from the journal 4"}
    assert [entry["model_response"] for entry in json.loads(out.read_text())] == [responses[i] for i in range(7)]
    assert not journal_path(out).exists()


@pytest.mark.parametrize("change, named", [
    (["--max-new-tokens", 7], "max_new_tokens (6, now 7)"),  # other settings, each named with its values
    (["--seed", 5], "seed (123, now 5)"),
    ("weights", "weights"),  # other weights under the same name
    ("input", "input"),  # the input file edited
])
def test_cli_refuses_a_journal_of_something_else(tiny_pth, tokenizer_dir, instruction_file, tmp_path, capsys, change,
                                                 named):
    """Resuming never mixes: a journal written with other weights, settings or input is refused in
    one line naming what changed; --restart starts over."""
    path, entries = instruction_file
    out = tmp_path / "out.json"
    weights = tmp_path / "weights.pth"
    weights.write_bytes(tiny_pth.read_bytes())
    with cli_journal(weights, path, out, max_new_tokens=6) as journal:
        journal.append([0], ["from the journal"])
    flags = ["--file", path, "--out", out, "--max-new-tokens", 6]
    if change == "weights":
        torch.save({k: v + 1e-3 for k, v in torch.load(tiny_pth, weights_only=True).items()}, weights)
    elif change == "input":
        path.write_bytes(path.read_bytes() + orjson.dumps({"instruction": "One more."}) + b"\n")
    else:
        flags += change
    argv = ["--weights", str(weights), "--model", "tiny", "--tokenizer-dir", str(tokenizer_dir), *map(str, flags)]
    assert generate_main(argv) == 2  # in this process: the refusal comes before any generation
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and f"the journal's {named} differ" in stderr and "--restart" in stderr
    assert not out.exists() and journal.path.exists()
    if named == "weights":  # --restart once: it answers every entry again
        assert generate_main([*argv, "--restart"]) == 0
        assert "from the journal" not in out.read_text() and not journal.path.exists()


def test_cli_interrupted_run_resumes(tiny_pth, tokenizer_dir, instruction_data, tmp_path):
    # Enough work (64 x 64 tokens, one entry per batch) that the signal lands mid-file even
    # on an idle machine.
    entries = json.loads(instruction_data.read_text())[:64]
    path, out = tmp_path / "in.json", tmp_path / "out.json"
    path.write_text(json.dumps(entries))
    journal = journal_path(out)
    command = [sys.executable, "-m", "trainer.generate", "--weights", str(tiny_pth), "--model", "tiny",
               "--tokenizer-dir", str(tokenizer_dir), "--file", str(path), "--out", str(out),
               "--batch-size", "1", "--max-new-tokens", "64"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the CLI the default disposition a terminal gives.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 3) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and not out.exists()
    kept = [orjson.loads(line) for line in journal.read_bytes().splitlines()][1:]  # after the identity line
    assert 2 <= len(kept) < 64
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(kept)} of 64 entries already answered" in resumed.stderr
    answered = json.loads(out.read_text())
    assert [entry["instruction"] for entry in answered] == [entry["instruction"] for entry in entries]
    for record in kept:
        assert answered[record["index"]]["model_response"] == record["response"]
    assert not journal.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"instruction": "Hi"}, {"input": "no instruction"}]', "entry 1: missing field 'instruction'"),
        ('[{"instruction": ["not", "text"]}]', "entry 0: field 'instruction' must be a string"),
        ("[{oops", "not valid JSON"),
    ],
)
def test_cli_bad_file_writes_nothing(tiny_pth, tokenizer_dir, tmp_path, content, message):
    path, out = tmp_path / "bad.json", tmp_path / "out.json"
    path.write_text(content)
    proc = run_cli(tiny_pth, tokenizer_dir, "--file", path, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(path) in proc.stderr and message in proc.stderr
    assert proc.stdout == "" and sorted(tmp_path.iterdir()) == [path]


def test_cli_bad_weights_writes_nothing(tokenizer_dir, tmp_path, instruction_file):
    path, _ = instruction_file
    weights = tmp_path / "garbage.pth"
    weights.write_bytes(b"not a checkpoint")
    out = tmp_path / "out.json"
    proc = run_cli(weights, tokenizer_dir, "--file", path, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(weights) in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pth", "in.jsonl"]


# --- bench/generate_throughput.py -------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "bench" / "generate_throughput.py"


@pytest.mark.slow  # compiles two models (about 20 s on 2 cores)
def test_generate_bench_prints_a_row_per_feature(tokenizer_dir, instruction_data):
    command = [sys.executable, str(BENCH), "--model", "tiny", "--num-prompts", "4", "--max-new-tokens", "4"]
    command += ["--baseline-prompts", "1", "--data", str(instruction_data), "--tokenizer-dir", str(tokenizer_dir)]
    command += ["--rows", "0,1,2,3,4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    bf16 = native_bf16(torch.device("cpu"))
    for number, name in enumerate(
        ["recompute, one prompt at a time (chapter)", "kv-cache, batched (fp32)", "+ bf16 weights",
         "+ compiled decode step", "+ bf16 weights + compiled decode step"]
    ):
        if "bf16" in name and not bf16:
            assert f"#{number} {name}: skipped, no bf16 matmuls in this cpu's hardware" in lines
            continue
        (row,) = [line for line in lines if re.match(rf"\s*{number}  {re.escape(name)}\s+\d", line)]
        prompts, new_tokens = row[len(f"{number:>2}  ") + 42 :].split()[:2]
        assert (int(prompts), int(new_tokens)) == ((1, 4) if number == 0 else (4, 16))  # this seeded tiny model writes no eos in 4 steps
        if number > 1:
            assert re.fullmatch(rf"#{number} {re.escape(name)}: same greedy tokens as #1 on [0-4]/4 prompts",
                                next(line for line in lines if line.startswith(f"#{number} ")))
    if "+ compiled decode step" in result.stdout:
        assert re.search(r"warm-up s\s+graphs", result.stdout)
    assert "CUDA graphs for the decode step: skipped, no CUDA device" in lines
    assert re.fullmatch(r"ratio_vs_baseline: \d+\.\d\d", lines[-1])
    # The fp32 paths give the same greedy tokens: batched against the chapter's, compiled against eager.
    assert "#1 kv-cache, batched (fp32): same tokens as the baseline on 1/1 prompts" in lines
    assert "#3 + compiled decode step: same greedy tokens as #1 on 4/4 prompts" in lines
