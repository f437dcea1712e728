"""trainer.gpt2.weights against independent implementations: transformers' GPT2LMHeadModel (test-only)
and a minimal re-implementation of the chapter's GPTModel, with every tensor randomised, so a
mis-mapped, untransposed or swapped tensor changes the logits."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from trainer.gpt2.fetch import DownloadError, sha256_file
from trainer.gpt2.model import GPT, preset
from trainer.gpt2.weights import (
    HUB_SHA256,
    chapter_filename,
    download_pretrained,
    export_chapter_pth,
    export_hf,
    load_model,
)

TINY = preset("tiny")  # emb_dim 64, 2 layers, 4 heads, the real vocabulary and context


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter random, LayerNorm scales and all biases included (a tied head once)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def tokens(length: int = 12) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))


def greedy(forward, idx: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Argmax decoding by full recomputation (no cache): the same for any implementation."""
    for _ in range(steps):
        idx = torch.cat([idx, forward(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def hf_oracle(tied: bool) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_embd=TINY.emb_dim,
        n_layer=TINY.n_layers,
        n_head=TINY.n_heads,
        n_positions=TINY.context_length,
        vocab_size=TINY.vocab_size,
        tie_word_embeddings=tied,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return randomise(GPT2LMHeadModel(config), seed=2)


def our_model(tied: bool) -> GPT:
    return randomise(GPT(replace(TINY, tie_embeddings=tied)), seed=3)


def assert_same_outputs(ours, theirs) -> None:
    """Same logits (fp32, atol 1e-4) and the same greedy continuation."""
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx), atol=1e-4, rtol=0)
        assert torch.equal(greedy(ours, idx), greedy(theirs, idx))


def hf_logits(hf: GPT2LMHeadModel):
    return lambda idx: hf(idx).logits


def assert_tied(model: GPT, tied: bool) -> None:
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    assert model.config.tie_embeddings == tied


# --- the chapter's GPTModel, re-implemented with its module names ----------------------------


class ChapterLayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + 1e-5) + self.shift


class ChapterAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.emb_dim
        self.heads = config.n_heads
        self.W_query = nn.Linear(d, d, bias=config.qkv_bias)
        self.W_key = nn.Linear(d, d, bias=config.qkv_bias)
        self.W_value = nn.Linear(d, d, bias=config.qkv_bias)
        self.out_proj = nn.Linear(d, d)
        n = config.context_length
        self.register_buffer("mask", torch.triu(torch.ones(n, n), diagonal=1))  # persistent, as the chapter's

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, -1).transpose(1, 2) for w in (self.W_query, self.W_key, self.W_value))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class ChapterFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.emb_dim
        self.layers = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x):
        return self.layers(x)


class ChapterBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.att = ChapterAttention(config)
        self.ff = ChapterFeedForward(config)
        self.norm1 = ChapterLayerNorm(config.emb_dim)
        self.norm2 = ChapterLayerNorm(config.emb_dim)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))


class ChapterGPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.trf_blocks = nn.Sequential(*[ChapterBlock(config) for _ in range(config.n_layers)])
        self.final_norm = ChapterLayerNorm(config.emb_dim)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


# --- Hugging Face layouts in ------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_layout(tmp_path, tied):
    hf = hf_oracle(tied)
    hf.save_pretrained(tmp_path)
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) == (not tied)

    model, info = load_model(None, str(tmp_path))
    assert info.format == "hf"
    assert info.source == str(tmp_path / "model.safetensors")
    assert info.sha256 == sha256_file(tmp_path / "model.safetensors")
    assert info.config == replace(TINY, tie_embeddings=tied) == model.config
    assert_tied(model, tied)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert_same_outputs(model, hf_logits(hf))
    # The file itself, with the architecture from a preset that agrees with its config.json.
    model, _ = load_model("tiny", str(tmp_path / "model.safetensors"), dropout=0.1)
    assert model.config.dropout == 0.1
    assert_same_outputs(model.eval(), hf_logits(hf))


def hub_layout(save_pretrained_file: Path, dest: Path) -> None:
    """The hub's model.safetensors: no `transformer.` prefix, mask buffers, no lm_head."""
    tensors = {name.removeprefix("transformer."): t for name, t in load_file(save_pretrained_file).items()}
    assert "lm_head.weight" not in tensors
    n = TINY.context_length
    for i in range(TINY.n_layers):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, dest, metadata={"format": "pt"})


def test_hub_layout(tmp_path):
    hf = hf_oracle(tied=True)
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hub" / "model.safetensors"
    path.parent.mkdir()
    hub_layout(tmp_path / "hf" / "model.safetensors", path)

    model, info = load_model("tiny", str(path))
    assert (info.format, info.sha256) == ("hf-hub", sha256_file(path))
    assert_tied(model, True)
    assert_same_outputs(model, hf_logits(hf))
    with pytest.raises(ValueError, match=r"no config\.json beside it says what the model is: pass --model \(one of gpt2-small,"):
        load_model(None, str(path))


# --- exports out ------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_export_hf_loads_in_transformers(tmp_path, tied):
    model = our_model(tied)
    export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    assert ("lm_head.weight" in tensors) == (not tied)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: (in, out)
    config = orjson.loads((tmp_path / "hf" / "config.json").read_bytes())
    assert config["tie_word_embeddings"] == tied and config["n_ctx"] == config["n_positions"] == 1024

    hf, loading = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(loading[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    assert hf.config.tie_word_embeddings == tied
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tied
    assert_same_outputs(model, hf_logits(hf.eval()))

    # And back: the same tensors.
    again, info = load_model(None, str(tmp_path / "hf"))
    assert info.format == "hf"
    assert_tied(again, tied)
    assert_equal_states(again, model)


def assert_equal_states(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("tied", [True, False])
def test_chapter_export_loads_in_the_chapters_model(tmp_path, tied):
    model = our_model(tied)
    path = tmp_path / chapter_filename(TINY)
    export_chapter_pth(model, path)

    chapter = ChapterGPTModel(TINY)
    chapter.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert_same_outputs(model, chapter.eval())
    assert torch.equal(chapter.out_head.weight, model.lm_head.weight)

    # Back in: an untied model (the chapter's out_head is its own) with the identical tensors.
    again, info = load_model("tiny", str(path))
    assert info.format == "chapter" and info.config == replace(TINY, tie_embeddings=False)
    assert_tied(again, False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_chapters_own_file_loads(tmp_path):
    """A .pth as the chapter writes it: torch.save(model.state_dict()), mask buffers and all."""
    chapter = randomise(ChapterGPTModel(TINY), seed=4)
    path = tmp_path / "tiny-sft.pth"
    torch.save(chapter.state_dict(), path)
    assert "trf_blocks.0.att.mask" in torch.load(path, weights_only=True)

    model, info = load_model("tiny", str(path))
    assert (info.format, info.sha256) == ("chapter", sha256_file(path))
    assert_tied(model, False)
    assert_same_outputs(model, chapter)


@pytest.mark.parametrize("tied", [True, False])
def test_project_pth_round_trip(tmp_path, tied):
    model = our_model(tied)
    path = tmp_path / "model.pth"
    # This project's layout: its state dict, a tied head stored once (as the embedding).
    torch.save({k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}, path)

    again, info = load_model("tiny", str(path))
    assert info.format == "project"
    assert_tied(again, tied)
    assert_equal_states(again, model)


def test_chapter_filenames():
    names = {m: chapter_filename(preset(m)) for m in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny")}
    assert names == {
        "gpt2-small": "gpt2-small124M-sft.pth",
        "gpt2-medium": "gpt2-medium355M-sft.pth",
        "gpt2-large": "gpt2-large774M-sft.pth",
        "gpt2-xl": "gpt2-xl1558M-sft.pth",
        "tiny": "tiny-sft.pth",
    }
    # A shape that is no preset is named by its size, as the chapter names its files: distilgpt2's
    # 6 layers of gpt2-small have 82M parameters.
    assert chapter_filename(preset("gpt2-small", n_layers=6)) == "gpt2-82M-sft.pth"
    assert chapter_filename(preset("gpt2-small", context_length=128)) == "gpt2-124M-sft.pth"


def test_exports_replace_files_atomically(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"old")
    export_chapter_pth(our_model(True), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temporary file left


# --- random init ------------------------------------------------------------------------------


def test_random_init():
    model, info = load_model("tiny", "none")
    assert (info.source, info.format, info.sha256, info.config) == ("random", "random", None, TINY)
    assert_tied(model, True)
    _, info = load_model("tiny", "auto")  # tiny has no pretrained weights
    assert info.format == "random"


# --- bad files --------------------------------------------------------------------------------


def saved_hf(tmp_path: Path) -> Path:
    hf_oracle(tied=True).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf" / "model.safetensors"


def rewrite(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def error_of(*args) -> str:
    with pytest.raises(ValueError) as failure:
        load_model(*args)
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_missing_key(tmp_path):
    path = saved_hf(tmp_path)
    rewrite(path, lambda t: t.pop("transformer.h.1.ln_2.bias"))
    assert error_of(None, str(path)) == (
        f"{path} does not fit a GPT-2 of emb_dim 64, 2 layers, 4 heads, vocab 50257, context 1024: "
        "missing: transformer.h.1.ln_2.bias"
    )


def test_unexpected_key(tmp_path):
    path = saved_hf(tmp_path)
    rewrite(path, lambda t: t.update({"transformer.h.0.attn.extra": torch.zeros(3)}))
    assert error_of(None, str(path)).endswith(": unexpected: transformer.h.0.attn.extra")


def test_wrong_shape(tmp_path):
    path = saved_hf(tmp_path)
    rewrite(path, lambda t: t.update({"transformer.wpe.weight": torch.zeros(512, 64)}))
    assert error_of(None, str(path)).endswith(": shape file vs model: transformer.wpe.weight (512, 64) vs (1024, 64)")


def test_many_problems_are_counted(tmp_path):
    path = tmp_path / "tiny-sft.pth"
    export_chapter_pth(our_model(False), path)
    message = error_of("gpt2-small", str(path))
    assert "does not fit a GPT-2 of emb_dim 768, 12 layers" in message
    # 10 missing blocks of 16 tensors: five named, the rest counted.
    assert "missing: trf_blocks.2.norm1.scale, trf_blocks.2.norm1.shift, " in message
    assert "(+155 more); shape file vs model: tok_emb.weight (50257, 64) vs (50257, 768), " in message


def test_config_json_that_disagrees_with_model(tmp_path):
    path = saved_hf(tmp_path)
    assert error_of("gpt2-small", str(path.parent)).startswith(
        f"{path.parent / 'config.json'} describes a GPT-2 of emb_dim 64, 2 layers, 4 heads, vocab 50257, "
        "context 1024, not --model gpt2-small (a GPT-2 of emb_dim 768, 12 layers"
    )


def test_unknown_layout_and_missing_path(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    assert "neither the chapter's layout" in error_of("tiny", str(path))
    assert error_of("tiny", str(tmp_path / "nope.pth")).startswith(f"{tmp_path / 'nope.pth'}: no such file")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert error_of("tiny", str(tmp_path / "junk.pth")).startswith(f"{tmp_path / 'junk.pth'}: not a PyTorch checkpoint")


def _touch(path: str) -> None:
    Path(path).touch()


class CodeOnLoad:
    """Unpickling this runs _touch: what weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"transformer.wte.weight": torch.zeros(2), "payload": CodeOnLoad(marker)}, path)
    message = error_of("tiny", str(path))
    assert message.startswith(f"{path}: refused by torch.load(weights_only=True): ")
    assert "_touch" in message
    assert not marker.exists()

    torch.save({"transformer.wte.weight": torch.zeros(2), "step": 3}, path)  # allowed, but not a tensor
    assert error_of("tiny", str(path)) == f"{path}: step is a int, not a tensor"


# --- --weights auto from the hub --------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt2-small", "gpt2-medium"])  # known sha256 / asks the hub for it
def test_auto_offline_fails_fast_naming_the_flag(monkeypatch, tmp_path, closed_port_url, model):
    monkeypatch.setenv("GPT2_INSTRUCT_HUB_URL", f"{closed_port_url}/openai-community")
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DownloadError) as failure:
        load_model(model, "auto")
    assert time.monotonic() - start < 5
    message = str(failure.value)
    assert "\n" not in message
    assert f"from {closed_port_url}/openai-community/{model.replace('-small', '')}/resolve/main/model.safetensors" in message
    assert message.endswith("pass --weights PATH (a local model.safetensors, its directory, or a .pth)")


def serve_hub_file(file_server, repo: str, data: bytes, sha256: str | None) -> str:
    """The hub's answer to a resolve URL: a redirect to its CDN, with X-Linked-Etag."""
    resolve = f"/openai-community/{repo}/resolve/main/model.safetensors"
    headers = {"X-Linked-Etag": f'"{sha256}"'} if sha256 else {}
    file_server.redirects[resolve] = (f"/cdn/{repo}", headers)
    file_server.files[f"/cdn/{repo}"] = data
    return resolve


def test_auto_downloads_once_and_checks_the_hubs_sha256(monkeypatch, tmp_path, file_server):
    hf = hf_oracle(tied=True)
    hf.save_pretrained(tmp_path / "hf")
    hub_file = tmp_path / "model.safetensors"
    hub_layout(tmp_path / "hf" / "model.safetensors", hub_file)
    sha256 = sha256_file(hub_file)
    resolve = serve_hub_file(file_server, "gpt2-medium", hub_file.read_bytes(), sha256)
    monkeypatch.setenv("GPT2_INSTRUCT_HUB_URL", file_server.url("/openai-community"))
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))

    path, found = download_pretrained("gpt2-medium")
    assert path == tmp_path / "cache" / "hub" / "gpt2-medium" / "model.safetensors"
    assert found == sha256 and path.read_bytes() == hub_file.read_bytes()
    model, _ = load_model("tiny", str(path))
    assert_same_outputs(model, hf_logits(hf))

    # The real auto path finds the cached file (no new request) and checks it against the preset.
    requests = len(file_server.requests)
    message = error_of("gpt2-medium", "auto")
    assert message.startswith(f"{path} does not fit a GPT-2 of emb_dim 1024, 24 layers")
    assert len(file_server.requests) == requests
    assert [(m, p) for m, p, _ in file_server.requests] == [("HEAD", resolve), ("GET", resolve), ("GET", "/cdn/gpt2-medium")]


def test_auto_rejects_a_file_that_is_not_the_published_one(monkeypatch, tmp_path, file_server):
    serve_hub_file(file_server, "gpt2", b"something else", sha256=None)
    monkeypatch.setenv("GPT2_INSTRUCT_HUB_URL", file_server.url("/openai-community"))
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path))
    with pytest.raises(DownloadError, match=f"expected {HUB_SHA256['gpt2-small']}: deleted it; try again, or pass --weights"):
        load_model("gpt2-small", "auto")
    assert not any(p.name.startswith("model.safetensors") and p.name != "model.safetensors.lock" for p in tmp_path.rglob("*"))


# --- shapes that are no preset -------------------------------------------------------------------


@pytest.mark.parametrize("shape, name", [({"n_layer": 6}, "gpt2-4M"), ({"n_positions": 128}, "gpt2-3M")])
def test_a_non_preset_shape_loads_from_its_config_and_generates_as_transformers(tmp_path, shape, name):
    """A GPT-2 that is no preset (distilgpt2's 6 layers, a 128-token context), saved by
    transformers: its config.json says what it is (no --model), and greedy generation with the KV
    cache gives transformers' greedy search token for token (float64: no near-tie flips)."""
    from trainer.gpt2.generation import GenerationSettings, generate
    from trainer.gpt2.model import model_name

    sizes = {"n_layer": 2, "n_positions": 1024, **shape}
    config = GPT2Config(n_embd=64, n_head=4, vocab_size=TINY.vocab_size, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, **sizes)
    hf = randomise(GPT2LMHeadModel(config), seed=4).double()
    hf.save_pretrained(tmp_path / "hf")
    model, info = load_model(None, str(tmp_path / "hf"))
    assert (info.config.n_layers, info.config.context_length) == (config.n_layer, config.n_positions)
    assert model_name(model.config) == name and chapter_filename(model.config) == f"{name}-sft.pth"
    prompts = [tokens(length)[0].tolist() for length in (5, 40)]
    ours = generate(model.double().eval(), prompts, GenerationSettings(max_new_tokens=24), eos_id=-1)
    for prompt, new in zip(prompts, ours):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                               pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert new == expected[0, len(prompt):].tolist()
    assert error_of("gpt2-small", str(tmp_path / "hf")).startswith(f"{tmp_path / 'hf' / 'config.json'} describes")


def test_a_pth_finds_its_architecture_beside_it(tmp_path):
    """A run's .pth is described by the run's config.json (its `architecture`); an export's by the
    hf/config.json beside it; a bare .pth needs --model."""
    model = our_model(False)
    run = tmp_path / "run"
    export_chapter_pth(model, run / "tiny-sft.pth")
    (run / "config.json").write_bytes(orjson.dumps({"v": 1, "architecture": {
        "vocab_size": 50257, "context_length": 1024, "emb_dim": 64, "n_layers": 2, "n_heads": 4, "qkv_bias": True}}))
    again, info = load_model(None, str(run / "tiny-sft.pth"))
    assert info.config == replace(TINY, tie_embeddings=False)
    assert_same_outputs(again, model)

    export = tmp_path / "exports" / "global_step2"
    export_chapter_pth(model, export / "tiny-sft.pth")
    export_hf(model, export / "hf")
    assert load_model(None, str(export / "tiny-sft.pth"))[1].config == replace(TINY, tie_embeddings=False)

    bare = tmp_path / "bare" / "tiny-sft.pth"
    export_chapter_pth(model, bare)
    assert "no config.json beside it says what the model is: pass --model" in error_of(None, str(bare))
    assert load_model("tiny", str(bare))[1].config == replace(TINY, tie_embeddings=False)
