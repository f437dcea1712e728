"""GPT-2 weights: the pretrained checkpoints, files in four layouts, and exports back to them.

Layouts read and written (a .safetensors file holds a HF layout, anything else is read with
torch.load; which layout, the names inside the file tell):

- "hf": transformers' `save_pretrained` (`model.safetensors` + `config.json`): our module names
  (model.py follows them), but GPT-2's Conv1D layers store their weight (in, out), the transpose
  of nn.Linear. A tied model has no `lm_head.weight` (safetensors holds no shared tensors).
- "hf-hub": the `model.safetensors` on the hub: as "hf" without the `transformer.` prefix, plus
  the attention mask buffers (`h.N.attn.bias`, `h.N.attn.masked_bias`), which are not weights.
- "project": a `.pth` of this project's state dict (a tied model stores the shared tensor once,
  as `transformer.wte.weight`).
- "chapter": a `.pth` saved by Raschka's *Build a Large Language Model (From Scratch)*, ch. 7
  (`torch.save(model.state_dict(), "gpt2-medium355M-sft.pth")`): its own module names, separate
  query/key/value projections, and an `out_head` of its own, so it loads as an untied model.

Every `torch.load` here passes `weights_only=True`: a checkpoint is data, never code.

Environment: GPT2_INSTRUCT_HUB_URL, the base URL of the pretrained repositories (default
https://huggingface.co/openai-community; tests point it at a server on 127.0.0.1), and
GPT2_INSTRUCT_CACHE, where downloads are kept (trainer/gpt2/fetch.py).
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson
import safetensors.torch
import torch
from safetensors import SafetensorError

from instruct import atomic_write_json
from trainer.gpt2.fetch import cache_dir, download, hub_sha256, sha256_file
from trainer.gpt2.model import (CHAPTER_SIZE_NAMES, DEFAULT_MODEL, GPT, PRESETS, SHAPE_FIELDS, GPTConfig, model_name,
                                preset, shape)
from trainer.gpt2.tokenizer import EOT_TOKEN_ID

# The pretrained checkpoints: repositories under GPT2_INSTRUCT_HUB_URL.
HUB_REPOS = {"gpt2-small": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large", "gpt2-xl": "gpt2-xl"}
DEFAULT_HUB_URL = "https://huggingface.co/openai-community"
# sha256 of each repository's model.safetensors (its LFS object id), where published copies of
# it agree. For the others, the hub's X-Linked-Etag header gives it at download time.
HUB_SHA256 = {"gpt2-small": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"}

DEFAULT_OFFLINE_HINT = "pass --weights PATH (a local model.safetensors, its directory, or a .pth)"

# --- Hugging Face layouts ------------------------------------------------------------------
# Weights of Conv1D layers, stored (in, out): transposed on the way in and on the way out.
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The causal-mask buffers some HF files carry. Skipped by name: they are not weights.
HF_BUFFERS = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")
# config.json fields with the values this GPT implements (absent means transformers' default,
# which is the same value). Written by export_hf and checked when reading a config.json.
HF_FIXED = {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": None}

# --- the chapter's layout ------------------------------------------------------------------
# Our name -> the chapter's name(s), for the tensors outside the blocks and (with {i}) in block i.
# Where three names stand for one of ours, the chapter keeps the query, key and value projections
# apart and we fuse them: ours is theirs stacked along dim 0, in that order (model.py splits
# c_attn's output into q, k, v). One table, read both ways.
CHAPTER_NAMES = {
    "transformer.wte.weight": ("tok_emb.weight",),
    "transformer.wpe.weight": ("pos_emb.weight",),
    "transformer.h.{i}.ln_1.weight": ("trf_blocks.{i}.norm1.scale",),
    "transformer.h.{i}.ln_1.bias": ("trf_blocks.{i}.norm1.shift",),
    "transformer.h.{i}.attn.c_attn.weight": (
        "trf_blocks.{i}.att.W_query.weight",
        "trf_blocks.{i}.att.W_key.weight",
        "trf_blocks.{i}.att.W_value.weight",
    ),
    "transformer.h.{i}.attn.c_attn.bias": (
        "trf_blocks.{i}.att.W_query.bias",
        "trf_blocks.{i}.att.W_key.bias",
        "trf_blocks.{i}.att.W_value.bias",
    ),
    "transformer.h.{i}.attn.c_proj.weight": ("trf_blocks.{i}.att.out_proj.weight",),
    "transformer.h.{i}.attn.c_proj.bias": ("trf_blocks.{i}.att.out_proj.bias",),
    "transformer.h.{i}.ln_2.weight": ("trf_blocks.{i}.norm2.scale",),
    "transformer.h.{i}.ln_2.bias": ("trf_blocks.{i}.norm2.shift",),
    "transformer.h.{i}.mlp.c_fc.weight": ("trf_blocks.{i}.ff.layers.0.weight",),
    "transformer.h.{i}.mlp.c_fc.bias": ("trf_blocks.{i}.ff.layers.0.bias",),
    "transformer.h.{i}.mlp.c_proj.weight": ("trf_blocks.{i}.ff.layers.2.weight",),
    "transformer.h.{i}.mlp.c_proj.bias": ("trf_blocks.{i}.ff.layers.2.bias",),
    "transformer.ln_f.weight": ("final_norm.scale",),
    "transformer.ln_f.bias": ("final_norm.shift",),
    "lm_head.weight": ("out_head.weight",),
}
# The chapter's attention registers its causal mask as a (persistent) buffer, so its files carry
# one per block and its load_state_dict(strict=True) expects one: skipped on the way in, written
# on the way out.
CHAPTER_MASK = "trf_blocks.{i}.att.mask"
CHAPTER_BUFFERS = re.compile(r"trf_blocks\.\d+\.att\.mask")

StateDict = dict[str, torch.Tensor]


@dataclass
class WeightsInfo:
    """Where a model's weights came from (recorded in the run's provenance)."""

    source: str  # "random", "hub", or the path read
    format: str  # "hf", "hf-hub", "project", "chapter" or "random"
    sha256: str | None  # of the file read
    config: GPTConfig


def load_model(
    model: str | None,
    weights: str = "auto",
    *,
    dropout: float = 0.0,
    offline_hint: str = DEFAULT_OFFLINE_HINT,
) -> tuple[GPT, WeightsInfo]:
    """A GPT (fp32, on the CPU) and where its weights came from.

    model: a preset name (trainer/gpt2/model.py). For "auto" and "none" it says which (default
    the chapter's gpt2-medium); for a path it is needed only where no config.json beside the
    weights says what they are (a bare .pth), and one that contradicts the file is refused.
    weights: "auto" (a preset's pretrained weights from the hub; random for `tiny`, which has
    none), "none" (random init), or a path: a HF model.safetensors or its directory, or a .pth
    in this project's or the chapter's layout.
    """
    if weights in ("auto", "none"):
        model = model or DEFAULT_MODEL
        if weights == "none" or model not in HUB_REPOS:
            config = preset(model, dropout=dropout)
            return GPT(config), WeightsInfo(source="random", format="random", sha256=None, config=config)
        path, sha256 = download_pretrained(model, offline_hint=offline_hint)
        source = "hub"
    else:
        path = Path(weights)
        if path.is_dir():
            path = path / "model.safetensors"
        if not path.is_file():
            raise ValueError(f"{path}: no such file (--weights takes auto, none, or a path)")
        sha256 = sha256_file(path)
        source = str(path)
    if path.suffix == ".safetensors":
        state, config, layout = _read_hf(path, model, dropout)
    else:
        state, config, layout = _read_pth(path, model, dropout)
    return _build(config, state), WeightsInfo(source=source, format=layout, sha256=sha256, config=config)


def hub_url(model: str) -> str:
    base = os.environ.get("GPT2_INSTRUCT_HUB_URL", DEFAULT_HUB_URL).rstrip("/")
    return f"{base}/{HUB_REPOS[model]}/resolve/main/model.safetensors"


def download_pretrained(model: str, *, offline_hint: str = DEFAULT_OFFLINE_HINT) -> tuple[Path, str]:
    """The cached model.safetensors of a pretrained preset (downloaded once per node), and its sha256."""
    url = hub_url(model)
    dest = cache_dir() / "hub" / HUB_REPOS[model] / "model.safetensors"
    sha256 = HUB_SHA256.get(model)
    if sha256 is None:
        if dest.exists():
            return dest, sha256_file(dest)  # checked against the hub's sha256 when downloaded
        sha256 = hub_sha256(url, offline_hint=offline_hint)
    return download(url, dest, sha256=sha256, offline_hint=offline_hint), sha256


# --- reading -------------------------------------------------------------------------------


def _read_hf(path: Path, model: str | None, dropout: float) -> tuple[StateDict, GPTConfig, str]:
    try:
        tensors = safetensors.torch.load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None
    if "transformer.wte.weight" in tensors:
        layout = "hf"
    elif "wte.weight" in tensors:
        layout = "hf-hub"
    else:
        raise ValueError(f"{path}: not a GPT-2 checkpoint (no transformer.wte.weight or wte.weight)")
    config = _architecture(path, model, dropout, tied="lm_head.weight" not in tensors)
    expected = state_dict_to_hf(_shapes(config), config)
    if layout == "hf-hub":
        expected = {name.removeprefix("transformer."): t for name, t in expected.items()}
    _check(path, tensors, expected, HF_BUFFERS, config)
    return hf_to_state_dict(tensors), config, layout


def _architecture(path: Path, model: str | None, dropout: float, tied: bool) -> GPTConfig:
    """The architecture of the weights in `path`: what a config.json beside it says (transformers'
    or a run's), else the preset `model`. A `model` that contradicts the file is refused; `tied`
    (the file holds no lm_head.weight of its own) comes from the tensors."""
    described_by = next((c for c in (path.with_name("config.json"), path.parent / "hf" / "config.json")
                         if c.is_file()), None)
    if described_by is None:
        if model is None:
            raise ValueError(f"{path}: no config.json beside it says what the model is: pass --model "
                             f"(one of {', '.join(PRESETS)})")
        return preset(model, dropout=dropout, tie_embeddings=tied)
    config = read_architecture(described_by, dropout, tied)
    if model is not None and shape(preset(model)) != shape(config):
        raise ValueError(f"{described_by} describes {describe(config)}, not --model {model} ({describe(preset(model))})")
    return config


def read_architecture(config_path: Path, dropout: float, tied: bool) -> GPTConfig:
    """A GPTConfig from transformers' config.json (`n_layer`, ...) or a run's (`architecture`;
    before it was recorded, the preset named by `config.model`)."""
    try:
        described = orjson.loads(config_path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
        if not isinstance(described, dict):
            raise ValueError(f"{config_path}: expected a JSON object, got {type(described).__name__}")
        if "n_layer" in described:
            for field, value in HF_FIXED.items():
                if described.get(field, value) != value:
                    raise ValueError(f"{config_path}: {field} is {described[field]!r}; this GPT-2 implements {value!r}")
            fields = {"vocab_size": described["vocab_size"], "context_length": described["n_positions"],
                      "emb_dim": described["n_embd"], "n_layers": described["n_layer"], "n_heads": described["n_head"]}
        elif isinstance(described.get("architecture"), dict):
            fields = {field: described["architecture"][field] for field in SHAPE_FIELDS}
        elif isinstance(described.get("config"), dict) and described["config"].get("model") in PRESETS:
            fields = shape(preset(described["config"]["model"]))
        else:
            raise ValueError(f"{config_path}: neither transformers' GPT-2 config (n_layer, n_embd, ...) "
                             "nor a run's (architecture)")
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    except KeyError as e:
        raise ValueError(f"{config_path}: missing field {e}") from None
    if not all(isinstance(fields[f], int) and not isinstance(fields[f], bool) and fields[f] > 0
               for f in SHAPE_FIELDS if f != "qkv_bias"):
        raise ValueError(f"{config_path}: the sizes must be positive integers ({fields})")
    if fields["emb_dim"] % fields["n_heads"]:
        raise ValueError(f"{config_path}: n_embd {fields['emb_dim']} is not a multiple of n_head {fields['n_heads']}")
    return GPTConfig(**fields, dropout=dropout, tie_embeddings=tied)


def _read_pth(path: Path, model: str | None, dropout: float) -> tuple[StateDict, GPTConfig, str]:
    tensors = _torch_load(path)
    if "tok_emb.weight" in tensors:
        config = _architecture(path, model, dropout, tied=False)  # the chapter's out_head is its own
        _check(path, tensors, state_dict_to_chapter(_shapes(config), config), CHAPTER_BUFFERS, config)
        return chapter_to_state_dict(tensors, config), config, "chapter"
    if "transformer.wte.weight" in tensors:
        config = _architecture(path, model, dropout, tied="lm_head.weight" not in tensors)
        _check(path, tensors, _project_state(_shapes(config), config), None, config)
        return tensors, config, "project"
    raise ValueError(
        f"{path}: neither the chapter's layout (tok_emb.weight, trf_blocks.N...) "
        f"nor this project's (transformer.wte.weight, transformer.h.N...)"
    )


def _torch_load(path: Path) -> StateDict:
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the sentence after "WeightsUnpickler error:" says what failed.
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0].split(". ")[0]
        if detail.startswith("Unsupported global"):
            raise ValueError(f"{path}: refused by torch.load(weights_only=True): {_one_line(detail)}") from None
        raise ValueError(f"{path}: not a PyTorch checkpoint ({_one_line(detail)})") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a PyTorch checkpoint ({_one_line(e)})") from None
    if not isinstance(tensors, dict):
        raise ValueError(f"{path}: expected a state dict (names to tensors), found a {type(tensors).__name__}")
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {name} is a {type(value).__name__}, not a tensor")
    return tensors


def _shapes(config: GPTConfig) -> StateDict:
    """The state dict of a model of this architecture, as shapes only (on the meta device)."""
    with torch.device("meta"):
        return GPT(config).state_dict()


def _check(path: Path, found: StateDict, expected: StateDict, ignored: re.Pattern | None, config: GPTConfig) -> None:
    """One ValueError naming every missing key, unexpected key and shape mismatch."""
    names = [name for name in found if not (ignored and ignored.fullmatch(name))]
    missing = [name for name in expected if name not in found and not (ignored and ignored.fullmatch(name))]
    unexpected = [name for name in names if name not in expected]
    mismatched = [
        f"{name} {tuple(found[name].shape)} vs {tuple(expected[name].shape)}"
        for name in names
        if name in expected and found[name].shape != expected[name].shape
    ]
    problems = [
        f"{what}: {_short(items)}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape file vs model", mismatched))
        if items
    ]
    if problems:
        raise ValueError(f"{path} does not fit {describe(config)}: {'; '.join(problems)}")


def _build(config: GPTConfig, state: StateDict) -> GPT:
    """A GPT holding the given tensors (as fp32), without first filling it with random ones."""
    state = {name: t.to(torch.float32).contiguous() for name, t in state.items()}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        # assign=True gives each name its own Parameter: share the one object again.
        model.lm_head.weight = model.transformer.wte.weight
    return model


# --- conversions ---------------------------------------------------------------------------


def hf_to_state_dict(sd: StateDict) -> StateDict:
    """Our state dict from a HF GPT-2 state dict in either layout (mask buffers dropped)."""
    ours = {}
    for name, t in sd.items():
        if HF_BUFFERS.fullmatch(name):
            continue
        if not name.startswith("transformer.") and name != "lm_head.weight":
            name = "transformer." + name  # the hub's layout
        ours[name] = _conv1d(name, t)
    return ours


def state_dict_to_hf(sd: StateDict, config: GPTConfig) -> StateDict:
    """save_pretrained's layout of our state dict; without lm_head.weight when tied."""
    return {
        name: _conv1d(name, t)
        for name, t in sd.items()
        if not (name == "lm_head.weight" and config.tie_embeddings)
    }


def _conv1d(name: str, t: torch.Tensor) -> torch.Tensor:
    """Conv1D weights are nn.Linear's transposed, in either direction."""
    return t.t().contiguous() if name.endswith(HF_CONV1D_WEIGHTS) else t


def _chapter_table(config: GPTConfig) -> dict[str, tuple[str, ...]]:
    table = {}
    for ours, theirs in CHAPTER_NAMES.items():
        for i in range(config.n_layers) if "{i}" in ours else [None]:
            table[ours.format(i=i)] = tuple(name.format(i=i) for name in theirs)
    return table


def state_dict_to_chapter(sd: StateDict, config: GPTConfig) -> StateDict:
    """The chapter's state dict (GPTModel.load_state_dict(strict=True) takes it) from ours."""
    table = _chapter_table(config)
    chapter = {}
    for ours, tensor in sd.items():
        theirs = table[ours]
        # Copies: a tied model's out_head becomes a tensor of its own, and the q/k/v parts do
        # not keep the fused tensor alive in the file.
        for name, part in zip(theirs, tensor.chunk(len(theirs), dim=0)):
            chapter[name] = part.clone()
    n = config.context_length
    mask = torch.triu(torch.ones(n, n), diagonal=1)  # one tensor: torch.save stores it once
    for i in range(config.n_layers):
        chapter[CHAPTER_MASK.format(i=i)] = mask
    return chapter


def chapter_to_state_dict(sd: StateDict, config: GPTConfig) -> StateDict:
    """Our state dict (untied) from the chapter's; its mask buffers are dropped."""
    return {
        ours: torch.cat([sd[name] for name in theirs], dim=0)
        for ours, theirs in _chapter_table(config).items()
        if theirs[0] in sd
    }


def _project_state(sd: StateDict, config: GPTConfig) -> StateDict:
    """What a project .pth holds: our state dict, the tied head stored once (as the embedding)."""
    return {name: t for name, t in sd.items() if not (name == "lm_head.weight" and config.tie_embeddings)}


# --- writing -------------------------------------------------------------------------------


def chapter_filename(config: GPTConfig) -> str:
    """The chapter's name for a fine-tuned model: gpt2-medium355M-sft.pth for a preset, by its size
    for any other shape (gpt2-82M-sft.pth)."""
    name = model_name(config)
    return f"{CHAPTER_SIZE_NAMES.get(name, name)}-sft.pth"


def export_chapter_pth(model: GPT, path: str | Path) -> None:
    chapter = state_dict_to_chapter(_cpu_state(model), model.config)
    write_atomically(Path(path), lambda tmp: torch.save(chapter, tmp))


def export_hf(model: GPT, directory: str | Path) -> None:
    """model.safetensors + config.json that transformers.GPT2LMHeadModel.from_pretrained loads."""
    directory = Path(directory)
    config = model.config
    tensors = state_dict_to_hf(_cpu_state(model), config)
    write_atomically(
        directory / "model.safetensors",
        lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        **HF_FIXED,
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "bos_token_id": EOT_TOKEN_ID,
        "eos_token_id": EOT_TOKEN_ID,
        "tie_word_embeddings": config.tie_embeddings,
    }
    atomic_write_json(directory / "config.json", hf_config)


def _cpu_state(model: GPT) -> StateDict:
    return {name: t.detach().cpu() for name, t in model.state_dict().items()}


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over path, as instruct.atomic_write_bytes does for bytes in memory;
    here the writer streams to disk, since an xl model does not fit in memory twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- messages ------------------------------------------------------------------------------


def describe(config: GPTConfig) -> str:
    return (
        f"a GPT-2 of emb_dim {config.emb_dim}, {config.n_layers} layers, {config.n_heads} heads, "
        f"vocab {config.vocab_size}, context {config.context_length}"
    )


def _short(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
