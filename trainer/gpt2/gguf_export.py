"""GGUF: the model as llama.cpp, Ollama and LM Studio read it, with its tokenizer and its prompt.

Written with `gguf`, llama.cpp's own writer (no llama.cpp checkout, no conversion script), with the
key-values llama.cpp's converter writes for GPT-2 (convert_hf_to_gguf.py, GPT2Model) and its
tensor names. docs/gguf.md lists both and says why each tensor is stored as it is.

- Tensors: our nn.Linear weights are (out, in), the layout ggml's matmul wants, so none is
  transposed (Hugging Face's Conv1D files store them (in, out): the converter transposes those). A
  tied output head is left out: llama.cpp then uses the token embedding. 1-D tensors (LayerNorms,
  biases) and the position embedding stay f32 in every type, as the converter keeps them: ggml
  has no f16 kernels for the additions they take part in.
- Tokenizer: GPT-2's byte-level BPE as encoder.json and vocab.bpe spell it, recovered from the
  tiktoken encoding the project uses (built from `--tokenizer-dir` or tiktoken's own cache; both
  are OpenAI's files, checked), so one path serves both; <|endoftext|> is a control token and
  both bos and eos, and no bos is added to prompts (GPT-2 was trained without one).
- Prompt: the Alpaca chat template (trainer/gpt2/chat_template.py), and an Ollama Modelfile beside it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import gguf
import numpy as np
import tiktoken
import torch

from instruct import atomic_write_text
from trainer.gpt2.chat_template import JINJA_TEMPLATE, modelfile
from trainer.gpt2.model import GPT, GPTConfig
from trainer.gpt2.tokenizer import EOT_TOKEN_ID
from trainer.gpt2.weights import HF_FIXED, write_atomically, chapter_filename

T = gguf.MODEL_TENSOR
# Our module names -> llama.cpp's tensors for the GPT-2 architecture; ".weight"/".bias" carry over.
# The fused qkv projection is llama.cpp's attn_qkv as it is (q, k, v stacked along the rows).
TENSORS = {
    "transformer.wte": T.TOKEN_EMBD,
    "transformer.wpe": T.POS_EMBD,
    "transformer.h.{i}.ln_1": T.ATTN_NORM,
    "transformer.h.{i}.attn.c_attn": T.ATTN_QKV,
    "transformer.h.{i}.attn.c_proj": T.ATTN_OUT,
    "transformer.h.{i}.ln_2": T.FFN_NORM,
    "transformer.h.{i}.mlp.c_fc": T.FFN_UP,
    "transformer.h.{i}.mlp.c_proj": T.FFN_DOWN,
    "transformer.ln_f": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
}
_BLOCK = re.compile(r"transformer\.h\.(\d+)\.(.+)")

# --gguf-type: the type of the 2-D weights, and the file type recorded in the header.
GGUF_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
DEFAULT_GGUF_TYPE = "f16"


def gguf_name(config: GPTConfig) -> str:
    """The chapter's name of the fine-tuned model without its .pth: gpt2-medium355M-sft."""
    return chapter_filename(config).removesuffix(".pth")


def export_gguf(model: GPT, tokenizer: tiktoken.Encoding, directory: str | Path,
                gguf_type: str = DEFAULT_GGUF_TYPE) -> Path:
    """<directory>/<name>.gguf and the Modelfile beside it, each written atomically; the .gguf's path."""
    check_gguf(model.config, tokenizer, gguf_type)
    directory = Path(directory)
    path = directory / f"{gguf_name(model.config)}.gguf"
    write_atomically(path, lambda tmp: write_gguf(model, tokenizer, tmp, gguf_type))
    atomic_write_text(directory / "Modelfile", modelfile(path.name, model.config))
    return path


def check_gguf(config: GPTConfig, tokenizer: tiktoken.Encoding, gguf_type: str) -> None:
    """A ValueError (one line) where this model cannot go into a GGUF of this type; before anything
    is written."""
    if config.vocab_size != tokenizer.n_vocab:
        raise ValueError(f"the model has {config.vocab_size} token embeddings and GPT-2's tokenizer "
                         f"{tokenizer.n_vocab} tokens: llama.cpp needs one per token")
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type {gguf_type}: choose one of {', '.join(GGUF_TYPES)}")
    qtype = GGUF_TYPES[gguf_type][0]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    # Every 2-D weight's rows (ggml's innermost dimension) are emb_dim or 4 * emb_dim long.
    if config.emb_dim % block:
        raise ValueError(f"--gguf-type {gguf_type} stores rows in blocks of {block} values and this model's "
                         f"emb_dim {config.emb_dim} is no multiple of {block}: use --gguf-type f16")


def write_gguf(model: GPT, tokenizer: tiktoken.Encoding, path: Path, gguf_type: str) -> None:
    """The GGUF file at `path`: header, key-values, tensor infos and data, in the writer's order."""
    config = model.config
    qtype, file_type = GGUF_TYPES[gguf_type]
    writer = gguf.GGUFWriter(path, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    try:
        add_architecture(writer, config, file_type)
        add_tokenizer(writer, tokenizer)
        writer.add_chat_template(JINJA_TEMPLATE)
        for name, tensor in llama_cpp_tensors(model):
            data, raw_dtype = stored(name, tensor, qtype)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def add_architecture(writer: gguf.GGUFWriter, config: GPTConfig, file_type: gguf.LlamaFileType) -> None:
    writer.add_name(gguf_name(config))
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.emb_dim)
    writer.add_feed_forward_length(4 * config.emb_dim)
    writer.add_block_count(config.n_layers)
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(HF_FIXED["layer_norm_epsilon"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: tiktoken.Encoding) -> None:
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizer regex
    specials = special_ids(tokenizer)
    writer.add_token_list(token_strings(tokenizer))
    writer.add_token_types([gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
                            for i in range(tokenizer.n_vocab)])
    writer.add_token_merges(merges(tokenizer))
    writer.add_bos_token_id(EOT_TOKEN_ID)
    writer.add_eos_token_id(EOT_TOKEN_ID)
    writer.add_add_bos_token(False)


# ---- tensors --------------------------------------------------------------------------------------


def llama_cpp_tensors(model: GPT) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp's name, tensor) for every tensor of the model; a tied head is stored once, as the
    token embedding."""
    named = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        module, kind = name.rsplit(".", 1)
        if block := _BLOCK.fullmatch(module):
            index, rest = block.groups()
            key, bid = f"transformer.h.{{i}}.{rest}", int(index)
        else:
            key, bid = module, None
        named.append((f"{gguf.TENSOR_NAMES[TENSORS[key]].format(bid=bid)}.{kind}", tensor))
    return named


def stored(name: str, tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType
           ) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor's data as it goes into the file, and its ggml type."""
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    keep_f32 = data.ndim == 1 or name.startswith(gguf.TENSOR_NAMES[T.POS_EMBD] + ".")
    qtype = gguf.GGMLQuantizationType.F32 if keep_f32 else qtype
    return gguf.quants.quantize(data, qtype), qtype


# ---- tokenizer ------------------------------------------------------------------------------------


@functools.cache
def byte_spelling() -> tuple[str, ...]:
    """How encoder.json and vocab.bpe write each byte (bytes_to_unicode of OpenAI's encoder.py): a
    printable Latin-1 byte as itself, every other byte as the next code point from 256 on, in order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}  # "!".."~", "¡".."¬", "®".."ÿ"
    shifted = iter(range(256, 512))
    return tuple(chr(b) if b in printable else chr(next(shifted)) for b in range(256))


def spell(token: bytes) -> str:
    spelling = byte_spelling()
    return "".join(spelling[b] for b in token)


def special_ids(tokenizer: tiktoken.Encoding) -> set[int]:
    return {tokenizer.encode_single_token(token) for token in tokenizer.special_tokens_set}


def token_strings(tokenizer: tiktoken.Encoding) -> list[str]:
    """Every token in id order, as encoder.json spells it; a special token as its text."""
    specials = special_ids(tokenizer)
    return [tokenizer.decode_single_token_bytes(i).decode() if i in specials
            else spell(tokenizer.decode_single_token_bytes(i)) for i in range(tokenizer.n_vocab)]


def merges(tokenizer: tiktoken.Encoding) -> list[str]:
    """vocab.bpe's merges in rank order ("a b"), recovered from the encoding's ranks.

    A token of rank r was made by merging two tokens of lower ranks. Byte-pair encoding of its own
    bytes with only the merges ranked below r stops at exactly those two: the last merge is the
    one that made it (GPT-2's ids are its ranks, and token 256 + k is merge k).
    """
    specials = special_ids(tokenizer)
    ranks = {tokenizer.decode_single_token_bytes(i): i for i in range(tokenizer.n_vocab) if i not in specials}
    made = sorted((rank, token) for token, rank in ranks.items() if len(token) > 1)
    return [" ".join(spell(part) for part in _last_merge(token, rank, ranks)) for rank, token in made]


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, i = min((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if best >= rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {rank} ({token!r}) is no merge of two lower-ranked tokens: not a byte-pair encoding")
    return parts[0], parts[1]
