"""The final phases of a run: what a finished training leaves behind. Each resumes what is missing.

1. final evaluation (every rank): the loss of the whole validation split with the final weights;
2. test responses (every rank): instruction-data-with-response.json, the test entries plus
   `model_response` as the chapter. Ranks take batches of length-sorted prompts from a shared
   counter, so one that finishes early takes more, and journal each batch as it finishes
   (responses/model_response.rank-<R>.jsonl, keyed by test-entry index); rank 0 merges the
   journals in file order. A resume, on any number of ranks, generates only what no journal holds;
3. export (rank 0 alone, the others waiting outside any collective): the fine-tuned model as the
   chapter names it (e.g. gpt2-medium355M-sft.pth, chapter key names), as Hugging Face files
   (hf/model.safetensors + hf/config.json), with --export-gguf as gguf/<name>.gguf and its Ollama
   Modelfile, and loss.png.

A stop on any rank interrupts every phase within one batch (trainer/lifecycle/coordination.py).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import orjson
import torch

from instruct import atomic_write_json
from trainer.gpt2.generation import GenerationSettings, generate_responses, length_sorted_batches
from trainer.gpt2.gguf_export import export_gguf
from trainer.gpt2.journal import JournalMismatch, ResponseJournal
from trainer.gpt2.weights import chapter_filename, export_chapter_pth, export_hf
from trainer.reporting.events import Generate
from trainer.reporting.lossplot import plot_losses
from trainer.training.config import TrainConfig
from trainer.training.engine import plain_model
from trainer.training.token_cache import Entries

RESPONSES_FILE = "instruction-data-with-response.json"
RESPONSES_DIR = "responses"
KEY = "model_response"  # the fine-tuned model's responses, as the chapter names them
BASE_KEY = "base_response"  # the initial weights' (--base-responses)


def generation_settings(config: TrainConfig) -> GenerationSettings:
    """How the run answers its test prompts: greedy, as the chapter, with the run's flags."""
    return GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.generate_batch,
                              compile=config.compile)


def finish(loop, run_dir: Path, coordinator) -> float:
    """Every final phase, in order; the final validation loss."""
    final_val_loss = loop.final_evaluation()
    model = plain_model(loop.engine)  # collective under ZeRO-3
    answer_test_split(loop, run_dir, model, coordinator, KEY)
    fields = [Responses(run_dir, key, identity, len(loop.data.test_entries))
              for key, identity in response_identities(loop).items()]
    coordinator.run_alone(None, write_responses_file, run_dir, loop.data.test_entries, fields)
    coordinator.run_alone("export", export_outputs, loop, run_dir, model, coordinator)
    return final_val_loss


def response_identities(loop) -> dict[str, dict]:
    """What each field of the responses file depends on: the final step's weights and, with
    --base-responses, the initial weights (step 0). Both add the generation settings."""
    settings = {"settings": asdict(generation_settings(loop.config))}
    identities = {KEY: {"step": loop.progress.step, **settings}}
    if loop.config.base_responses:
        identities[BASE_KEY] = {"step": 0, **settings}
    return identities


def answer_with_the_initial_weights(loop, run_dir: Path, coordinator) -> None:
    """--base-responses, before the first step: the test split answered by the initial weights,
    as the final responses are (the chapter generates with the base model before it trains). A
    run resumed past step 0 cannot: its initial weights are gone."""
    if loop.progress.step > 0:
        if Responses(run_dir, BASE_KEY, response_identities(loop)[BASE_KEY], len(loop.data.test_entries)).merged() is None:
            loop.log.warning(loop.progress.step, "--base-responses: this run resumed at step "
                                                 f"{loop.progress.step} has no base responses: its initial weights are gone")
        return
    answer_test_split(loop, run_dir, plain_model(loop.engine), coordinator, BASE_KEY)


# ---- test responses -----------------------------------------------------------------------------


class Responses:
    """One field of responses to the test split (`model_response`, `base_response`): its per-rank
    journals while it is generated, then responses/<key>.json (the responses in entry order, with
    the identity they were generated with)."""

    def __init__(self, run_dir: Path, key: str, identity: dict, total: int):
        self.folder = run_dir / RESPONSES_DIR
        self.key = key
        self.identity = identity  # what the responses depend on: step, settings (and weights)
        self.total = total
        self.merged_file = self.folder / f"{key}.json"

    def journal(self, rank: int) -> ResponseJournal:
        return ResponseJournal(self.folder / f"{self.key}.rank-{rank}.jsonl", self.identity)

    def merged(self) -> list[str] | None:
        """The responses in entry order, once merged with this identity."""
        try:
            merged = orjson.loads(self.merged_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return merged["responses"] if merged.get("identity") == self.identity else None

    def finished(self) -> dict[int, str]:
        """Every journalled response of this identity, whichever rank and attempt wrote it; the
        journals of another step or other settings are deleted, never mixed in."""
        found: dict[int, str] = {}
        for path in sorted(self.folder.glob(f"{self.key}.rank-*.jsonl")):
            journal = ResponseJournal(path, self.identity)
            try:
                found.update(journal.read(self.total))
            except JournalMismatch:
                path.unlink()
        return found

    def pending(self) -> list[int] | None:
        """The test entries no journal holds (rank 0 decides for all); None when merged already."""
        if self.merged() is not None:
            return None
        finished = self.finished()
        return [i for i in range(self.total) if i not in finished]

    def merge(self) -> None:
        """Rank 0, once every rank has journalled its share: one file in entry order, the journals gone."""
        finished = self.finished()
        missing = [i for i in range(self.total) if i not in finished]
        if missing:
            raise RuntimeError(f"{len(missing)} {self.key}s are in no journal (first: test entry {missing[0]})")
        atomic_write_json(self.merged_file, {"identity": self.identity,
                                             "responses": [finished[i] for i in range(self.total)]})
        for path in self.folder.glob(f"{self.key}.rank-*.jsonl"):
            path.unlink()


def answer_test_split(loop, run_dir: Path, model, coordinator, key: str) -> None:
    """Every rank: the `key` responses of `model` to the test split, journalled and merged; what an
    earlier attempt journalled is kept."""
    entries = loop.data.test_entries
    settings = generation_settings(loop.config)
    responses = Responses(run_dir, key, response_identities(loop)[key], len(entries))
    pending = coordinator.run_alone(None, responses.pending)
    if pending is None:
        return  # merged by an earlier attempt
    loop.heartbeat.phase = "generate"
    loop.faults.maybe_hold(loop.dist.rank, "generate", coordinator.stop_requested)
    generate_share(loop, model, entries, pending, settings, responses, coordinator)
    coordinator.wait_for_all(f"{key}/generated", "generate")
    coordinator.run_alone(None, responses.merge)
    loop.log.event(Generate(done=len(entries), total=len(entries)))
    loop.heartbeat.phase = "idle"


def generate_share(loop, model, entries: Entries, pending: list[int], settings: GenerationSettings,
                   responses: Responses, coordinator) -> None:
    """Batches of pending prompts of similar lengths (the token cache's prompt lengths: no entry
    is read or tokenized to sort them), each to the rank that asks for it first. Only the entries
    of a batch are read, when it is generated."""
    tokenizer = loop.data.tokenizer
    lengths = entries.prompt_lengths[pending].tolist()
    batches = [[pending[p] for p in batch] for batch in length_sorted_batches(lengths, settings.batch_size)]
    already = len(entries) - len(pending)
    model.eval()
    with responses.journal(loop.dist.rank) as journal:
        while (index := coordinator.take(f"{responses.key}/batch")) < len(batches):
            coordinator.check_stop()
            batch = batches[index]
            answers = generate_responses(model, tokenizer, [entries[i] for i in batch],
                                         replace(settings, batch_size=len(batch)))
            journal.append(batch, answers)
            done = already + coordinator.add(f"{responses.key}/done", len(batch))
            loop.log.event(Generate(done=done, total=len(entries)))


def write_responses_file(run_dir: Path, entries: Entries, fields: list[Responses]) -> None:
    """Rank 0: the chapter's instruction-data-with-response.json, the test entries with each field
    of responses merged (model_response, and base_response where the run has them)."""
    answers = [(responses.key, responses.merged()) for responses in fields]
    atomic_write_json(run_dir / RESPONSES_FILE, [
        {**entry, **{key: merged[i] for key, merged in answers if merged is not None}} for i, entry in enumerate(entries)
    ])


# ---- export ---------------------------------------------------------------------------------------


def export_outputs(loop, run_dir: Path, model, coordinator) -> None:
    """Rank 0: the model files in fp32, and loss.png; a stop ends it between files."""
    loop.faults.maybe_hold(loop.dist.rank, "export", coordinator.stop_requested)
    coordinator.check_stop()
    exportable = model.float() if model is not loop.engine.module else plain_model(loop.engine, torch.float32)
    export_chapter_pth(exportable, run_dir / chapter_filename(exportable.config))
    coordinator.check_stop()
    export_hf(exportable, run_dir / "hf")
    if loop.config.export_gguf:
        coordinator.check_stop()
        export_gguf(exportable, loop.data.tokenizer, run_dir / "gguf")
    coordinator.check_stop()
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
