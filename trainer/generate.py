"""`python -m trainer.generate`: answer one instruction, a prompt loop, or a whole instruction
file (resumable) with a (fine-tuned) GPT-2, using the chapter's Alpaca prompt.

The generation itself is trainer/gpt2/generation.py; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from instruct import atomic_write_text, read_entries
from trainer.gpt2.fetch import sha256_file
from trainer.gpt2.generation import GenerationSettings, generate_responses, response_batches
from trainer.gpt2.journal import JournalMismatch, ResponseJournal
from trainer.gpt2.model import PRESETS
from trainer.gpt2.precision import resolve_precision
from trainer.gpt2.tokenizer import get_tokenizer
from trainer.gpt2.weights import load_model


def journal_path(out: Path) -> Path:
    """Where `--file` records finished entries, so that an interrupted run resumes."""
    return out.with_suffix(".partial.jsonl")


def file_identity(args, settings: GenerationSettings, weights_sha256: str | None, precision: str) -> dict:
    """What the responses of `--file` depend on: a journal written with anything else is refused."""
    return {
        "weights": weights_sha256,
        "input": sha256_file(args.file),
        "settings": {**asdict(settings), "seed": args.seed, "precision": precision},
    }


def answer_file(out: Path, settings: GenerationSettings, model: nn.Module, tokenizer, entries: list[dict],
                journal: ResponseJournal, finished: dict[int, str], generator) -> None:
    """Answer every entry of `--file` not `finished` (read from the journal) into `--out`,
    journaling each batch."""
    pending = [i for i in range(len(entries)) if i not in finished]
    if finished:
        print(f"resuming: {len(finished)} of {len(entries)} entries already answered in {journal.path}", file=sys.stderr)
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress, journal:
        task = progress.add_task("generating", total=len(entries), completed=len(finished))
        batches = response_batches(model, tokenizer, [entries[i] for i in pending], settings, generator=generator)
        for positions, responses in batches:
            indices = [pending[position] for position in positions]
            finished.update(zip(indices, responses))
            journal.append(indices, responses)
            progress.advance(task, len(positions))
    results = [{**entry, "model_response": finished[i]} for i, entry in enumerate(entries)]
    # The chapter's instruction-data-with-response.json: json.dump(test_data, file, indent=4).
    atomic_write_text(out, json.dumps(results, indent=4))
    journal.path.unlink()


def answer_stdin(settings: GenerationSettings, model: nn.Module, tokenizer, generator) -> None:
    """A prompt loop: one instruction per line until end of input or `quit`."""
    while True:
        try:
            instruction = input("Instruction: ").strip()
        except EOFError:
            break
        if instruction == "quit":
            break
        if instruction:
            print(respond(settings, model, tokenizer, {"instruction": instruction}, generator), flush=True)


def respond(settings: GenerationSettings, model: nn.Module, tokenizer, entry: dict, generator) -> str:
    (response,) = generate_responses(model, tokenizer, [entry], settings, generator=generator)
    return response


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.generate",
        description="Answer instructions with a (fine-tuned) GPT-2, using the chapter's Alpaca prompt.",
    )
    parser.add_argument("instruction", nargs="?", help="the instruction; without it, read instructions from stdin")
    parser.add_argument("--input", default="", help="the instruction's input text, if any")
    parser.add_argument("--weights", required=True, help="a .pth (the chapter's or this project's), a HF model.safetensors or its directory")
    parser.add_argument("--model", default=None, choices=list(PRESETS),
                        help="preset, needed only where no config.json beside the weights says what they are "
                             "(a bare .pth); with --weights auto, which to download (default: gpt2-medium)")
    parser.add_argument("--tokenizer-dir", help="directory with GPT-2's encoder.json and vocab.bpe (offline)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) picks the most likely token")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="default: 256, as the chapter")
    parser.add_argument("--seed", type=int, default=123, help="seed of the sampling (default: 123)")
    parser.add_argument("--file", help="answer every entry of this instruction file (JSON list or JSONL)")
    parser.add_argument("--out", help="with --file: write the entries plus model_response here")
    parser.add_argument("--batch-size", type=int, default=16, help="with --file: prompts per batch (default: 16)")
    parser.add_argument("--restart", action="store_true",
                        help="with --file: delete the journal of an earlier, interrupted run and answer every entry again")
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, batch_size=args.batch_size, compile=args.compile)
    try:
        # The instruction file first: a typo in it should not wait for a model to load.
        entries = read_entries(args.file, required=("instruction",), optional=("input", "output")) if args.file else None
        tokenizer = get_tokenizer(args.tokenizer_dir)
        model, info = load_model(args.model, args.weights)
        precision = resolve_precision(args.precision, device)
        journal, finished = None, {}
        if entries is not None:
            journal = ResponseJournal(journal_path(Path(args.out)), file_identity(args, settings, info.sha256, precision))
            if args.restart:
                journal.path.unlink(missing_ok=True)
            finished = journal.read(len(entries))  # a journal of other weights, settings or input: refused
    except JournalMismatch as e:
        print(f"error: {e}; pass --restart to answer every entry again", file=sys.stderr)
        return 2
    except ValueError as e:  # EntryError, TokenizerError and load_model's errors: one line each
        print(f"error: {e}", file=sys.stderr)
        return 2
    # bf16 halves the weights and KV cache each decode step reads; auto takes it where the GPU
    # computes in it natively, as the trainer does.
    model.to(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    generator = torch.Generator(device).manual_seed(args.seed)
    try:
        if entries is not None:
            answer_file(Path(args.out), settings, model, tokenizer, entries, journal, finished, generator)
        elif args.instruction is not None:
            entry = {"instruction": args.instruction, "input": args.input}
            print(respond(settings, model, tokenizer, entry, generator))
        else:
            answer_stdin(settings, model, tokenizer, generator)
    except KeyboardInterrupt:
        print("interrupted (with --file, the same command resumes where it stopped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
