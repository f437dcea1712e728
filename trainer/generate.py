"""Generating responses: batched with the KV cache, and the chapter's one-prompt recomputation.

Raschka, *Build a Large Language Model (From Scratch)*, ch. 5 and 7, generates one prompt at a
time and feeds the whole sequence to the model for every new token. That costs O(n^2) work per
response and leaves a GPU mostly idle. `generate` here does what gpt-fast's generate.py does
(https://github.com/pytorch-labs/gpt-fast): one prefill forward over the prompts fills a
preallocated KV cache, then each decode step feeds exactly one token per row. Many prompts of
different lengths run at once: they are left-padded to a common width, every row gets its own
position ids, and an attention mask keeps each row from seeing its pads, so a row gives exactly
what it gives alone.

`generate_recompute` is the chapter's loop, kept as the test oracle and the benchmark baseline.
Both pick tokens with the same `sample_next`.

Command line (`python -m trainer.generate --help`): answer one instruction, a prompt loop, or a
whole instruction file (resumable) with a fine-tuned model.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import orjson
import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from instruct import EntryError, atomic_write_bytes, atomic_write_text, format_input, read_entries
from trainer.engine import resolve_precision
from trainer.model import EOT_TOKEN_ID, PRESETS
from trainer.tokenizer import get_tokenizer
from trainer.weights import load_model

PAD_TOKEN_ID = EOT_TOKEN_ID  # the chapter's collate pads with <|endoftext|>; pads are masked anyway


# --- Picking the next token -------------------------------------------------------------------


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token of each row from its last logits (B, vocab) -> (B,).

    The chapter's `generate` (ch. 5): keep the top-k logits, then sample from
    softmax(logits / temperature), or take the argmax when the temperature is 0.
    """
    if top_k is not None:
        top_logits, _ = torch.topk(logits, top_k)
        logits = torch.where(logits < top_logits[:, -1:], float("-inf"), logits)
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return logits.argmax(dim=-1)


def fit_context(prompt: list[int], context_length: int) -> list[int]:
    """Cut a prompt from the left, as the chapter's `idx[:, -context_size:]`, leaving room for
    at least one new token: prompt plus new tokens never exceed the context length."""
    if not prompt:
        raise ValueError("cannot generate from an empty prompt")
    return prompt[-(context_length - 1):]


@contextmanager
def eval_mode(model: nn.Module):
    """Dropout off while generating (the chapter calls model.eval() first), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --- Generation -------------------------------------------------------------------------------


def decode_one_token(
    model: nn.Module, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor
) -> torch.Tensor:
    """One decode step: the next-token logits (B, vocab) after feeding one token per row (B, 1)
    at `position` (B, 1), written to cache slot `slot` (1,), attending to the cache slots `mask`
    (B, 1, 1, slots) allows. Every step has the same shapes (gpt-fast's decode_one_token)."""
    return model(token, position, mask, cache_slots=slot)[:, -1]


@functools.cache
def compiled_decode_one_token(device_type: str) -> Callable[..., torch.Tensor]:
    """decode_one_token through torch.compile, made on first use (importing the compiler takes
    seconds). On a GPU, mode "reduce-overhead" also records the step as a CUDA graph and replays
    it: one launch per step instead of one per kernel, which is what a small model's decode at a
    small batch is bound by. Not fullgraph: the trainer generates with DeepSpeed's engine module,
    whose forward pre-hook is DeepSpeed's Python bookkeeping; what of it dynamo cannot trace runs
    eagerly beside the graph instead of failing the step."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(decode_one_token, mode=mode, dynamic=False)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int = EOT_TOKEN_ID,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """The new tokens of each prompt (without the eos), all prompts at once with the KV cache.

    A row stops at `eos_id`, after `max_new_tokens`, or when its prompt plus new tokens fill the
    model's context; the loop stops when every row has stopped. `compile`: decode steps through
    compiled_decode_one_token (the prefill, once per call, stays eager).
    """
    context_length = model.config.context_length
    device = next(model.parameters()).device
    prompts = [fit_context(prompt, context_length) for prompt in prompts]
    lengths = torch.tensor([len(prompt) for prompt in prompts], device=device)
    budgets = (context_length - lengths).clamp(max=max_new_tokens)  # new tokens each row may take
    steps = int(budgets.max())
    if steps <= 0:
        return [[] for _ in prompts]

    # Left padding puts every prompt's last token in the last column, so one prefill gives the
    # next-token logits of all rows, and each decode step writes the same cache slot in all rows.
    width = int(lengths.max())
    idx = torch.tensor([[PAD_TOKEN_ID] * (width - len(p)) + p for p in prompts], device=device)
    pads = width - lengths
    cache_length = width + steps - 1
    if compile:
        # The compiled step is specialised to the cache's shape: rounded up to a power of two, a
        # file of prompts of many widths compiles a few shapes instead of one per width (with 256
        # new tokens: 512, 1024 or 2048 slots, times the batch size and the last batch's, within
        # dynamo's limit of 8 graphs; past it dynamo runs the step eagerly).
        cache_length = 1 << (cache_length - 1).bit_length()
    slots = torch.arange(cache_length, device=device)  # the cache slot of each padded position
    real = slots[None, :] >= pads[:, None]  # (B, slots): False on a row's pads
    positions = (slots[None, :width] - pads[:, None]).clamp(min=0)  # each prompt starts at 0
    # Prefill: a query sees the real tokens up to its own slot, and a pad sees itself only. A query
    # with nothing to attend to is 0/0 in the softmax: recent SDPA kernels return zeros, older
    # ones NaN (pytorch#103749), and a NaN in the cache would poison real rows (pytorch#101967).
    query, key = slots[:width, None], slots[None, :]
    prefill_mask = (key <= query) & (real[:, None, :] | (key == query))  # (B, width, slots)
    decode = compiled_decode_one_token(device.type) if compile else decode_one_token

    new_tokens = []
    with eval_mode(model):
        model.setup_caches(batch_size=len(prompts), max_length=cache_length)
        try:
            logits = model(idx, positions, prefill_mask[:, None], cache_slots=slots[:width], last_only=True)[:, -1]
            done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
            for step in range(steps):
                token = sample_next(logits, temperature, top_k, generator)
                new_tokens.append(token)
                done |= (token == eos_id) | (budgets <= step + 1)
                if done.all():
                    break
                slot = slots[width + step : width + step + 1]
                # Finished rows ride along (their tokens are dropped below); clamping keeps a row
                # whose context is full from asking for a position past the embedding table.
                position = (lengths + step).clamp(max=context_length - 1)
                mask = real & (slots <= slot)  # (B, slots): the row's real tokens so far
                logits = decode(model, token[:, None], position[:, None], mask[:, None, None], slot)
        finally:
            model.clear_caches()

    rows = torch.stack(new_tokens, dim=1).tolist()
    return [_until_eos(row[:budget], eos_id) for row, budget in zip(rows, budgets.tolist())]


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.inference_mode()
def generate_recompute(
    model: nn.Module,
    prompt: list[int],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int = EOT_TOKEN_ID,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The chapter's generation: one prompt, no cache, the whole sequence fed for every token.

    The same stopping rules as `generate` (which it checks in the tests).
    """
    context_length = model.config.context_length
    device = next(model.parameters()).device
    idx = torch.tensor([fit_context(prompt, context_length)], device=device)
    new_tokens: list[int] = []
    with eval_mode(model):
        while len(new_tokens) < max_new_tokens and idx.size(1) < context_length:
            logits = model(idx)[:, -1]  # as the chapter: every position's logits, the last one used
            token = sample_next(logits, temperature, top_k, generator)
            if token.item() == eos_id:
                break
            new_tokens.append(token.item())
            idx = torch.cat([idx, token[:, None]], dim=1)
    return new_tokens


# --- Responses to instruction entries ---------------------------------------------------------


def extract_response(text: str, prompt: str) -> str:
    """The response in a generated text, as the chapter: what follows the prompt, without the
    "### Response:" header the fine-tuned model writes itself."""
    return text[len(prompt):].replace("### Response:", "").strip()


def length_sorted_batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in batches of similar lengths (less padding to compute), the
    longest first so that running out of memory happens at once rather than at the end."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def response_batches(
    model: nn.Module,
    tokenizer,
    entries: list[dict],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield (entry indices, their responses) batch by batch.

    The prompt is `format_input(entry)` without the "### Response:" header, as the chapter's
    generation loop (ch07 `input_text = format_input(entry)`): the fine-tuned model writes the
    header itself and `extract_response` removes it. Prompting with the header instead would
    change the token stream the model continues, and so the responses the chapter's scores
    were measured on.
    """
    input_texts = [format_input(entry) for entry in entries]
    prompts = [tokenizer.encode(text, allowed_special={"<|endoftext|>"}) for text in input_texts]
    for indices in length_sorted_batches(prompts, batch_size):
        outputs = generate(
            model,
            [prompts[i] for i in indices],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            compile=compile,
        )
        # Decoding only the new tokens equals the chapter's decoding the whole sequence and
        # slicing the prompt off: the prompt's bytes are complete UTF-8 on their own.
        responses = [
            extract_response(input_texts[i] + tokenizer.decode(tokens), input_texts[i])
            for i, tokens in zip(indices, outputs)
        ]
        yield indices, responses


def generate_responses(
    model: nn.Module,
    tokenizer,
    entries: list[dict],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The response to every entry, in input order; `on_batch(done, total)` after each batch."""
    responses: list[str] = [""] * len(entries)
    done = 0
    for indices, batch_responses in response_batches(
        model,
        tokenizer,
        entries,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        generator=generator,
        compile=compile,
    ):
        for i, response in zip(indices, batch_responses):
            responses[i] = response
        done += len(indices)
        if on_batch is not None:
            on_batch(done, len(entries))
    return responses


# --- Command line -----------------------------------------------------------------------------


def journal_path(out: Path) -> Path:
    """Where `--file` records finished entries, so that an interrupted run resumes."""
    return out.with_suffix(".partial.jsonl")


def read_journal(path: Path, n_entries: int) -> dict[int, str]:
    """Responses already generated: {entry index: response}.

    A last line without its newline is a write cut short by a crash, and is dropped (and the
    journal rewritten without it); anything else unreadable is an error.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    finished: dict[int, str] = {}
    for line_number, line in enumerate(lines, start=1):
        try:
            record = orjson.loads(line)
            index, response = record["index"], record["model_response"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise EntryError(f"{path}: line {line_number} is not a journal record; delete the file to start over")
        if not (isinstance(index, int) and 0 <= index < n_entries and isinstance(response, str)):
            raise EntryError(
                f"{path}: line {line_number}: entry {index!r} does not belong to an input of "
                f"{n_entries} entries; delete the file to start over"
            )
        finished[index] = response
    if torn:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in lines))
    return finished


def answer_file(args, model: nn.Module, tokenizer, entries: list[dict], finished: dict[int, str], generator) -> None:
    """Answer every entry of `--file` not `finished` yet into `--out`, journaling each batch."""
    out = Path(args.out)
    journal = journal_path(out)
    pending = [i for i in range(len(entries)) if i not in finished]
    if finished:
        print(f"resuming: {len(finished)} of {len(entries)} entries already answered in {journal}", file=sys.stderr)
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress, journal.open("ab") as journal_file:
        task = progress.add_task("generating", total=len(entries), completed=len(finished))
        batches = response_batches(
            model,
            tokenizer,
            [entries[i] for i in pending],
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            generator=generator,
            compile=args.compile,
        )
        for positions, responses in batches:
            for position, response in zip(positions, responses):
                finished[pending[position]] = response
                journal_file.write(orjson.dumps({"index": pending[position], "model_response": response}) + b"\n")
            journal_file.flush()
            progress.advance(task, len(positions))
    results = [{**entry, "model_response": finished[i]} for i, entry in enumerate(entries)]
    # The chapter's instruction-data-with-response.json: json.dump(test_data, file, indent=4).
    atomic_write_text(out, json.dumps(results, indent=4))
    journal.unlink()


def answer_stdin(args, model: nn.Module, tokenizer, generator) -> None:
    """A prompt loop: one instruction per line until end of input or `quit`."""
    while True:
        try:
            instruction = input("Instruction: ").strip()
        except EOFError:
            break
        if instruction == "quit":
            break
        if instruction:
            print(respond(args, model, tokenizer, {"instruction": instruction}, generator), flush=True)


def respond(args, model: nn.Module, tokenizer, entry: dict, generator) -> str:
    (response,) = generate_responses(
        model,
        tokenizer,
        [entry],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        generator=generator,
        compile=args.compile,
    )
    return response


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.generate",
        description="Answer instructions with a (fine-tuned) GPT-2, using the chapter's Alpaca prompt.",
    )
    parser.add_argument("instruction", nargs="?", help="the instruction; without it, read instructions from stdin")
    parser.add_argument("--input", default="", help="the instruction's input text, if any")
    parser.add_argument("--weights", required=True, help="a .pth (the chapter's or this project's), a HF model.safetensors or its directory")
    parser.add_argument("--model", default="gpt2-medium", choices=list(PRESETS), help="model size (default: gpt2-medium)")
    parser.add_argument("--tokenizer-dir", help="directory with GPT-2's encoder.json and vocab.bpe (offline)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) picks the most likely token")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="default: 256, as the chapter")
    parser.add_argument("--seed", type=int, default=123, help="seed of the sampling (default: 123)")
    parser.add_argument("--file", help="answer every entry of this instruction file (JSON list or JSONL)")
    parser.add_argument("--out", help="with --file: write the entries plus model_response here")
    parser.add_argument("--batch-size", type=int, default=16, help="with --file: prompts per batch (default: 16)")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="the weights' and KV cache's type; auto (default): bf16 on a GPU that has it, else fp32",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the decode step (a CUDA graph on a GPU; meant for GPUs, not measured on one); "
        "on a CPU it compiles first (tens of seconds) and gains nothing (docs/performance.md)",
    )
    args = parser.parse_args(argv)
    if (args.file is None) != (args.out is None):
        parser.error("--file and --out go together")
    if args.file and args.instruction:
        parser.error("give an instruction or --file, not both")
    if args.temperature < 0 or args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--temperature must not be negative; --max-new-tokens and --batch-size must be at least 1")
    if args.top_k is not None and not 1 <= args.top_k <= 50257:
        parser.error("--top-k must be between 1 and the vocabulary size (50257)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # The instruction file first: a typo in it should not wait for a model to load.
        entries = read_entries(args.file, required=("instruction",), optional=("input", "output")) if args.file else None
        tokenizer = get_tokenizer(args.tokenizer_dir)
        model, _ = load_model(args.model, args.weights)
        finished = read_journal(journal_path(Path(args.out)), len(entries)) if args.file else {}
    except ValueError as e:  # EntryError, TokenizerError and load_model's errors: one line each
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 halves the weights and KV cache each decode step reads; auto takes it where the GPU
    # computes in it natively, as the trainer does.
    model.to(device, dtype=torch.bfloat16 if resolve_precision(args.precision, device) == "bf16" else torch.float32)
    generator = torch.Generator(device).manual_seed(args.seed)
    try:
        if entries is not None:
            answer_file(args, model, tokenizer, entries, finished, generator)
        elif args.instruction is not None:
            print(respond(args, model, tokenizer, {"instruction": args.instruction, "input": args.input}, generator))
        else:
            answer_stdin(args, model, tokenizer, generator)
    except KeyboardInterrupt:
        print("interrupted (with --file, the same command resumes where it stopped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
