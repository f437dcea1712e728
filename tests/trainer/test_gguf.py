"""The GGUF export checked against llama.cpp itself (llama-cpp-python, in this process or as its
OpenAI-compatible server): the tokenizer on the chapter's 1,100 entries, greedy continuations of
randomised GPT-2s against trainer.gpt2.generation, the chat template and the Modelfile against
instruct/'s prompt byte for byte, and `python -m trainer.export --gguf` on every kind of input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import warnings
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from instruct import format_input, format_prompt, read_entries
from testkit.llamacpp import first_difference, greedy, load, randomised_gpt
from testkit.llamaserver import llama_server
from testkit.paths import REPO
from trainer.export import main as export_main
from trainer.gpt2.chat_template import JINJA_TEMPLATE, OLLAMA_TEMPLATE, STOP_STRINGS
from trainer.gpt2.generation import GenerationSettings, generate
from trainer.gpt2.gguf_export import check_gguf, export_gguf, gguf_name, merges, token_strings
from trainer.gpt2.model import GPTConfig, preset
from trainer.gpt2.tokenizer import ENDOFTEXT, EOT_TOKEN_ID, get_tokenizer
from trainer.gpt2.weights import export_chapter_pth, export_hf, load_model
from trainer.training.data import split_entries

TINY = preset("tiny")  # emb_dim 64, 2 layers, 4 heads, GPT-2's vocabulary and context
SHAPES = {
    "tied": TINY,
    "untied": replace(TINY, tie_embeddings=False),
    # No preset: 80 wide (no q8_0), 5 heads of 16, 3 layers, a context of 64 that caps the answers.
    "odd": GPTConfig(emb_dim=80, n_layers=3, n_heads=5, context_length=64),
}
PROMPTS = 20  # the first test prompts
NEW_TOKENS = 32
NEAR_TIE = 1e-2  # a top-2 logit gap under which ggml's rounding may pick the other token
# ggml computes GELU through an f16 table: f32 logits differ from PyTorch's by up to 8e-3 here
# (bench/gguf_agreement.py); a misplaced or untransposed tensor moves them by far more.
LOGIT_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return get_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def entries(instruction_data) -> list[dict]:
    return read_entries(instruction_data)


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: randomised_gpt(config, seed=i) for i, (name, config) in enumerate(SHAPES.items())}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, models, tokenizer):
    """export(shape, type) -> the .gguf of that model, written once."""
    paths: dict[tuple[str, str], Path] = {}

    def export(shape: str, gguf_type: str) -> Path:
        if (shape, gguf_type) not in paths:
            directory = tmp_path_factory.mktemp(f"{shape}-{gguf_type}")
            paths[shape, gguf_type] = export_gguf(models[shape], tokenizer, directory, gguf_type)
        return paths[shape, gguf_type]

    return export


def user_message(entry: dict) -> str:
    """What a chat user sends for an entry (trainer/gpt2/chat_template.py): the prompt between the
    instruction mark and the response header, i.e. the instruction and the input section."""
    return format_input(entry).removeprefix(format_input({"instruction": ""}))


# ---- the tokenizer ----------------------------------------------------------------------------------


def test_the_vocabulary_is_encoder_json_and_vocab_bpe(tokenizer, tokenizer_dir):
    """Recovered from tiktoken's ranks, the tokens and merges are OpenAI's files, line for line."""
    encoder = json.loads((tokenizer_dir / "encoder.json").read_text(encoding="utf-8"))
    assert token_strings(tokenizer) == sorted(encoder, key=encoder.get)
    lines = (tokenizer_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and merges(tokenizer) == [line for line in lines[1:] if line]


def test_llama_cpp_tokenizes_the_chapter_entries_as_the_project(exported, tokenizer, entries):
    """Prompts, outputs and whole training texts (ending with <|endoftext|>) of all 1,100 entries:
    the same ids, and the ids decode to the same bytes."""
    from llama_cpp import Llama

    llm = Llama(str(exported("tied", "f16")), vocab_only=True, verbose=False)
    texts = [text for entry in entries
             for text in (format_prompt(entry), entry["output"], format_prompt(entry) + entry["output"] + ENDOFTEXT)]
    for text in texts:
        ours = tokenizer.encode(text, allowed_special={ENDOFTEXT})
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llm.detokenize(ours, special=True) == text.encode()
    assert len(texts) == 3300 and llm.tokenize(ENDOFTEXT.encode(), add_bos=False, special=True) == [EOT_TOKEN_ID]


# ---- the file ---------------------------------------------------------------------------------------


def field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


@pytest.mark.parametrize("shape, gguf_type", [("tied", "f16"), ("untied", "f32"), ("untied", "q8_0")])
def test_metadata_and_tensors(exported, models, shape, gguf_type):
    """llama.cpp's GPT-2 key-values; every tensor under its name, 1-D ones and the position
    embedding in f32, the 2-D weights in the type asked for; f32 tensors equal the model's."""
    config = SHAPES[shape]
    reader = gguf.GGUFReader(exported(shape, gguf_type))
    assert {key: field(reader, key) for key in (
        "general.architecture", "general.name", "gpt2.context_length", "gpt2.embedding_length",
        "gpt2.feed_forward_length", "gpt2.block_count", "gpt2.attention.head_count",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")} == {
        "general.architecture": "gpt2", "general.name": "tiny-sft", "gpt2.context_length": 1024,
        "gpt2.embedding_length": 64, "gpt2.feed_forward_length": 256, "gpt2.block_count": 2,
        "gpt2.attention.head_count": 4, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": EOT_TOKEN_ID, "tokenizer.ggml.eos_token_id": EOT_TOKEN_ID,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": JINJA_TEMPLATE}
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[EOT_TOKEN_ID] == gguf.TokenType.CONTROL and set(types[:EOT_TOKEN_ID]) == {gguf.TokenType.NORMAL}

    tensors = {t.name: t for t in reader.tensors}
    per_block = ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    expected |= {f"blk.{i}.{t}.{kind}" for i in range(config.n_layers) for t in per_block for kind in ("weight", "bias")}
    expected |= set() if config.tie_embeddings else {"output.weight"}
    assert set(tensors) == expected
    weights = gguf.GGMLQuantizationType[gguf_type.upper()]
    for name, tensor in tensors.items():
        f32 = len(tensor.shape) == 1 or name == "position_embd.weight"
        assert tensor.tensor_type == (gguf.GGMLQuantizationType.F32 if f32 else weights), name
    if gguf_type == "f32":
        state = models[shape].state_dict()
        assert np.array_equal(tensors["blk.1.attn_qkv.weight"].data, state["transformer.h.1.attn.c_attn.weight"].numpy())
        assert np.array_equal(tensors["blk.0.ffn_down.weight"].data, state["transformer.h.0.mlp.c_proj.weight"].numpy())
        if not config.tie_embeddings:
            assert np.array_equal(tensors["output.weight"].data, state["lm_head.weight"].numpy())


# ---- generation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_f32_greedy_continuations_equal_the_projects(exported, models, tokenizer, entries, shape):
    """The first 20 test prompts, 32 new tokens: token for token what trainer.gpt2.generation gives,
    except where the two best logits are within NEAR_TIE (reported); the first step's logits within
    LOGIT_TOLERANCE."""
    model = models[shape]
    prompts = [tokenizer.encode(format_prompt(e)) for e in split_entries(entries)[1][:PROMPTS]]
    ours = generate(model, prompts, GenerationSettings(max_new_tokens=NEW_TOKENS))
    llm = load(exported(shape, "f32"), model.config.context_length)
    near_ties = []
    for prompt, expected in zip(prompts, ours):
        theirs = greedy(llm, prompt, NEW_TOKENS)
        with torch.no_grad():
            first = model(torch.tensor([prompt[-(model.config.context_length - 1):]]))[0, -1].numpy()
        assert np.abs(theirs.logits[0] - first).max() < LOGIT_TOLERANCE
        at = first_difference(theirs.tokens, expected)
        if at is None:
            continue
        context = (prompt + expected[:at])[-(model.config.context_length - 1):]
        with torch.no_grad():
            logits = model(torch.tensor([context]))[0, -1]
        ours_next = expected[at] if at < len(expected) else EOT_TOKEN_ID
        theirs_next = theirs.tokens[at] if at < len(theirs.tokens) else EOT_TOKEN_ID
        gap = float(logits[ours_next] - logits[theirs_next])
        assert gap < NEAR_TIE, f"llama.cpp took {theirs_next} for {ours_next} at new token {at} (gap {gap:.3g})"
        near_ties.append(f"new token {at}: {ours_next} vs llama.cpp's {theirs_next}, top-2 gap {gap:.2e}")
    if near_ties:
        warnings.warn(f"{shape}: {len(near_ties)} of {PROMPTS} continuations part at a near-tie: {near_ties}")
    assert len(near_ties) <= PROMPTS // 4
    assert len({tuple(tokens) for tokens in ours}) >= PROMPTS - 2  # the model answers each prompt its own way
    if shape == "odd":
        # Prompts of 36 to 56 tokens: every answer stops at the context of 64, in both.
        assert {len(p) + len(t) for p, t in zip(prompts, ours)} == {64}


# ---- the prompt -------------------------------------------------------------------------------------


def test_the_chat_template_renders_the_alpaca_prompt(entries):
    """Rendered by llama-cpp-python's Jinja formatter (what its chat completion uses; trim_blocks
    and lstrip_blocks, as transformers) and by plain Jinja: every entry, with or without input, is
    format_prompt(entry) byte for byte; a conversation is its turns' training texts, each answer
    ended by <|endoftext|>; a system message is left out."""
    import jinja2
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=JINJA_TEMPLATE, eos_token=ENDOFTEXT, bos_token=ENDOFTEXT)
    render = lambda messages: formatter(messages=messages).prompt  # noqa: E731
    plain = jinja2.Template(JINJA_TEMPLATE)
    assert sum(1 for e in entries if e.get("input")) == 325  # both kinds, many of each
    for entry in entries:
        messages = [{"role": "user", "content": user_message(entry)}]
        assert render(messages) == plain.render(messages=messages, eos_token=ENDOFTEXT) == format_prompt(entry)
    first, second = entries[0], entries[1]
    conversation = [{"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": user_message(first)},
                    {"role": "assistant", "content": first["output"]},
                    {"role": "user", "content": user_message(second)}]
    assert render(conversation) == format_prompt(first) + first["output"] + ENDOFTEXT + format_prompt(second)


def test_the_modelfile(exported, entries):
    """FROM the GGUF beside it; its TEMPLATE, rendered as Ollama renders a template without .Messages
    (.Prompt filled in, cut after .Response for the turn being answered), is format_prompt(entry)
    byte for byte; the stops, the context and the chapter's greedy generation."""
    path = exported("odd", "f16")
    text = (path.parent / "Modelfile").read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    assert template == OLLAMA_TEMPLATE and template.count("{{") == 2
    for entry in entries:
        rendered = template.replace("{{ .Prompt }}", user_message(entry)).split("{{ .Response }}")[0]
        assert rendered == format_prompt(entry)
    lines = text.replace(f'TEMPLATE """{template}"""', "TEMPLATE").splitlines()
    assert lines == [f"FROM ./{path.name}", "TEMPLATE", 'PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "### Instruction:"',
                     "PARAMETER num_ctx 64", "PARAMETER num_predict 256", "PARAMETER temperature 0",
                     "PARAMETER repeat_penalty 1"]
    assert path.name == "gpt2-4M-sft.gguf" == gguf_name(SHAPES["odd"]) + ".gguf"  # no preset: named by size
    assert STOP_STRINGS == (ENDOFTEXT, "### Instruction:")


def test_llama_cpp_picks_the_template_up(exported):
    llm = load(exported("tied", "f32"), TINY.context_length)
    assert llm.metadata["tokenizer.chat_template"] == JINJA_TEMPLATE
    assert llm.chat_format == "chat_template.default"


# ---- python -m trainer.export ---------------------------------------------------------------------


def export_cli(*argv) -> int:
    return export_main([str(a) for a in argv])


def test_export_reads_every_layout_to_the_same_gguf(tmp_path, models, tokenizer_dir, exported):
    """A HF directory, a chapter .pth (with --model) and a project .pth give the very file that
    export_gguf writes from the model itself."""
    model = models["untied"]
    export_hf(model, tmp_path / "hf")
    export_chapter_pth(model, tmp_path / "bare" / "model.pth")
    torch.save(model.state_dict(), tmp_path / "project.pth")
    (tmp_path / "config.json").write_bytes((tmp_path / "hf" / "config.json").read_bytes())
    sources = {"hf": [tmp_path / "hf"], "chapter": [tmp_path / "bare" / "model.pth", "--model", "tiny"],
               "project": [tmp_path / "project.pth"]}
    for layout, source in sources.items():
        out = tmp_path / f"out-{layout}"
        assert export_cli("--weights", *source, "--tokenizer-dir", tokenizer_dir, "--gguf", "--gguf-type", "f32",
                          "--out", out) == 0
        gguf_file = out / "gguf" / "tiny-sft.gguf"
        assert sorted(p.name for p in gguf_file.parent.iterdir()) == ["Modelfile", "tiny-sft.gguf"]
        assert (out / "tiny-sft.pth").is_file() and (out / "hf" / "model.safetensors").is_file()
        assert gguf_file.read_bytes() == exported("untied", "f32").read_bytes(), layout


def zero0_run(run_dir: Path, model, step: int) -> None:
    """A run directory as the trainer leaves it with ZeRO 0: its config.json (the architecture) and a
    complete checkpoint whose model-states file holds the module's state dict."""
    config = {field: getattr(model.config, field) for field in ("vocab_size", "context_length", "emb_dim",
                                                                  "n_layers", "n_heads", "qkv_bias")}
    (run_dir / "checkpoints" / f"global_step{step}").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"v": 1, "architecture": config}))
    torch.save({"module": model.state_dict()}, run_dir / "checkpoints" / f"global_step{step}" / "mp_rank_00_model_states.pt")
    (run_dir / "checkpoints" / "latest").write_text(f"global_step{step}")


def test_export_a_run_directory_as_gguf(tmp_path, models, tokenizer_dir, exported):
    """`python -m trainer.export RUN_DIR --gguf` (a process of its own, as a user runs it) writes the
    chapter-named GGUF and Modelfile under exports/<tag>/gguf/: the file export_gguf writes."""
    zero0_run(tmp_path, models["tied"], step=4)
    env = {**os.environ, "GPT2_TOKENIZER_DIR": str(tokenizer_dir)}
    proc = subprocess.run([sys.executable, "-m", "trainer.export", str(tmp_path), "--gguf", "--gguf-type", "f32"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "exports" / "global_step4" / "gguf" / "tiny-sft.gguf"
    assert str(written) in proc.stdout and (written.parent / "Modelfile").is_file()
    assert written.read_bytes() == exported("tied", "f32").read_bytes()


@pytest.mark.parametrize("case", ["missing weights", "no checkpoint", "bad type", "no tokenizer", "q8_0 rows"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, models, tokenizer_dir, case, capsys):
    out = tmp_path / "out"
    export_hf(models["odd"], tmp_path / "odd")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"v": 1, "architecture": {}}))
    argv = {
        "missing weights": ["--weights", tmp_path / "nothing.pth", "--tokenizer-dir", tokenizer_dir],
        "no checkpoint": [tmp_path / "run", "--out", out, "--tokenizer-dir", tokenizer_dir],
        "bad type": ["--weights", tmp_path / "odd", "--gguf-type", "q4_k", "--tokenizer-dir", tokenizer_dir],
        "no tokenizer": ["--weights", tmp_path / "odd", "--tokenizer-dir", tmp_path / "no-such-dir"],
        "q8_0 rows": ["--weights", tmp_path / "odd", "--gguf-type", "q8_0", "--tokenizer-dir", tokenizer_dir],
    }[case]
    argv = [*argv, "--gguf"] + (["--out", out] if "--weights" in argv else [])
    try:
        code = export_cli(*argv)
    except SystemExit as e:  # argparse's choices
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(("error: ", "usage: ", "python -m trainer.export: error: "))
    expected = {"missing weights": "no such file", "no checkpoint": "holds no complete checkpoint",
                "bad type": "invalid choice: 'q4_k'", "no tokenizer": "--tokenizer-dir",
                "q8_0 rows": "emb_dim 80 is no multiple of 32"}[case]
    assert expected in err[-1] and (case == "bad type" or len(err) == 1)
    assert not out.exists()


def test_what_cannot_go_into_a_gguf_is_refused(tokenizer):
    check_gguf(TINY, tokenizer, "q8_0")
    with pytest.raises(ValueError, match="emb_dim 80 is no multiple of 32: use --gguf-type f16"):
        check_gguf(SHAPES["odd"], tokenizer, "q8_0")
    with pytest.raises(ValueError, match="the model has 50304 token embeddings and GPT-2's tokenizer 50257 tokens"):
        check_gguf(replace(TINY, vocab_size=50304), tokenizer, "f16")  # a vocabulary padded for speed


@pytest.mark.slow
def test_a_run_with_export_gguf_ends_with_the_gguf_of_its_model(tmp_path, tokenizer):
    """`deepspeed launch/train.py --export-gguf` (one CPU rank, the tiny preset, 2 steps) leaves
    gguf/tiny-sft.gguf and its Modelfile: the file export_gguf writes from the run's hf/ weights."""
    from tests.trainer.launcher import TINY as TINY_RUN, train

    out = tmp_path / "run"
    code, log = train([*TINY_RUN, "--max-steps", "2", "--eval-every", "0", "--max-new-tokens", "2",
                       "--export-gguf", "--out", str(out)], ranks=1)
    assert code == 0, log[-3000:]
    assert sorted(p.name for p in (out / "gguf").iterdir()) == ["Modelfile", "tiny-sft.gguf"]
    model, _ = load_model(None, str(out / "hf"))  # tied, as trained (the chapter's .pth is untied)
    again = export_gguf(model, tokenizer, tmp_path / "again", "f16")
    assert (out / "gguf" / "tiny-sft.gguf").read_bytes() == again.read_bytes()


# ---- serving: python -m llama_cpp.server ----------------------------------------------------------

PIECE_BUFFER = 32  # bytes llama-cpp-python gives llama_token_to_piece


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_llama_cpp_server_answers_as_the_project(tmp_path, exported, models, tokenizer, entries):
    """`python -m llama_cpp.server --model <name>.gguf` on 127.0.0.1: a chat completion (greedy, no
    repetition penalty) returns the text the project generates from the prompt the template renders."""
    path = exported("untied", "f32")
    with llama_server(path, tmp_path / "server.log", "--n_ctx", "1024", "--n_threads", "2") as url:
        dropped = 0
        for entry in (split_entries(entries)[1][0], next(e for e in entries if e.get("input"))):
            request = {"messages": [{"role": "user", "content": user_message(entry)}], "max_tokens": NEW_TOKENS,
                       "temperature": 0, "repeat_penalty": 1.0}
            reply = urllib.request.urlopen(urllib.request.Request(
                url + "/v1/chat/completions", data=json.dumps(request).encode(),
                headers={"Content-Type": "application/json"}), timeout=120)
            answer = json.loads(reply.read())
            (tokens,) = generate(models["untied"], [tokenizer.encode(format_prompt(entry))],
                                 GenerationSettings(max_new_tokens=NEW_TOKENS))
            # llama-cpp-python (0.3.36) drops every token whose text exceeds 32 bytes when it turns
            # tokens into text (abetlen/llama-cpp-python#2362, open); the first answer holds one.
            short = [t for t in tokens if len(tokenizer.decode_single_token_bytes(t)) <= PIECE_BUFFER]
            assert answer["choices"][0]["message"]["content"] in (tokenizer.decode(tokens), tokenizer.decode(short))
            assert answer["usage"]["completion_tokens"] == len(tokens) == NEW_TOKENS
            dropped += len(tokens) - len(short)
        assert dropped > 0  # the comparison above met the case
