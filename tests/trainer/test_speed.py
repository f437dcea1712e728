"""The speed features keep the math (CPU, fp32, the tiny preset on the chapter's data).

SDPA, fused AdamW, activation checkpointing and torch.compile give the per-step losses of the
plain baseline (hand-written attention, bench/train_throughput.py) on identical batches; packing
gives each example exactly its unpacked loss and gradients, and no example sees another;
length grouping visits the plain path's examples once each, as a pure function of
(seed, epoch, global batch). The last test runs the pipeline: grouping and packing reach the
plain path's validation loss after one epoch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instruct import read_entries
from testkit.attention import use_hand_written_attention
from testkit.compilation import compiled_graphs
from tests.trainer.launcher import TINY, events, of_type, train
from trainer.training.batches import epoch_order, global_batches, group_by_length_order, micro_batches, rank_slice
from trainer.training.data import Example, InstructionDataset, collate, split_entries, tokenize
from trainer.training.loss import IGNORE_INDEX, target_count, token_loss_sum
from trainer.gpt2.model import GPT, preset
from trainer.gpt2.tokenizer import EOT_TOKEN_ID
from trainer.training.packing import block_causal_mask, flex_block_mask, forward_kwargs, pack, pack_rows
from trainer.gpt2.tokenizer import get_tokenizer

STEPS = 3
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def train_examples(instruction_data, tokenizer_dir) -> list[Example]:
    train_entries, _, _ = split_entries(read_entries(instruction_data))
    return list(InstructionDataset(tokenize(train_entries, get_tokenizer(tokenizer_dir))))


def tiny_model(hand_written: bool = False) -> GPT:
    torch.manual_seed(123)
    model = GPT(preset("tiny"))
    return use_hand_written_attention(model) if hand_written else model


def losses_of(model: GPT, examples: list[Example], *, fused: bool = False, packed: bool = False) -> list[float]:
    """Per-step token-mean losses of STEPS AdamW steps on the first STEPS x GLOBAL_BATCH examples."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=fused)
    model.train()
    losses = []
    for step in range(STEPS):
        batch = examples[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        if packed:
            p = pack(batch, max_length=1024)
            logits = model(p.inputs, **forward_kwargs(p, torch.device("cpu")))
            targets = p.targets
        else:
            inputs, targets = collate([e.token_ids for e in batch])
            logits = model(inputs)
        loss = token_loss_sum(logits, targets) / target_count(targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def baseline_losses(train_examples) -> list[float]:
    return losses_of(tiny_model(hand_written=True), train_examples)


# ---- features that keep the math --------------------------------------------------------------


def test_sdpa_fused_adamw_and_checkpointing_keep_the_per_step_losses(train_examples, baseline_losses):
    assert losses_of(tiny_model(), train_examples) == pytest.approx(baseline_losses, rel=1e-4)
    assert losses_of(tiny_model(), train_examples, fused=True) == pytest.approx(baseline_losses, rel=1e-4)
    checkpointed = tiny_model()
    checkpointed.activation_checkpointing = True
    assert losses_of(checkpointed, train_examples) == pytest.approx(baseline_losses, rel=1e-4)
    # The steps do train: a change of the math would show.
    assert baseline_losses[-1] < baseline_losses[0] - 0.01


def test_packing_keeps_the_per_step_losses(train_examples, baseline_losses):
    assert losses_of(tiny_model(), train_examples, packed=True) == pytest.approx(baseline_losses, rel=1e-4)


@pytest.mark.slow  # compiles the tiny model's forward and backward (about a minute on 2 cores)
def test_compile_keeps_the_per_step_losses(train_examples, baseline_losses):
    model = tiny_model()
    model.compile(dynamic=True)
    graphs = compiled_graphs()
    assert losses_of(model, train_examples) == pytest.approx(baseline_losses, rel=1e-4)
    # dynamic=True: batches of different lengths share one graph (no compilation per length).
    assert compiled_graphs() - graphs == 1
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in tiny_model().named_parameters()]


# ---- packing: no cross-contamination ----------------------------------------------------------


def test_pack_lays_out_each_example_as_collate_would_alone(train_examples):
    chosen = train_examples[:7]
    packed = pack(chosen, max_length=200, mask_prompt=True)
    rows = pack_rows([len(e.token_ids) for e in chosen], 200)
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert packed.inputs.shape == (len(rows), packed.inputs.size(1)) and len(rows) > 1
    for r, row in enumerate(rows):
        start = 0
        for doc, i in enumerate(row):
            alone_inputs, alone_targets = collate([chosen[i].token_ids], prompt_lengths=[chosen[i].prompt_length])
            n = alone_inputs.size(1)
            assert packed.inputs[r, start : start + n].tolist() == alone_inputs[0].tolist()
            assert packed.targets[r, start : start + n].tolist() == alone_targets[0].tolist()
            assert packed.targets[r, start + n - 1] == EOT_TOKEN_ID  # its own end, not the next example
            assert packed.positions[r, start : start + n].tolist() == list(range(n))
            assert (packed.doc_ids[r, start : start + n] == doc).all()
            start += n
        assert start <= 200
        assert (packed.targets[r, start:] == IGNORE_INDEX).all()  # the tail takes no loss
        assert (packed.doc_ids[r, start:] == len(row)).all()


def test_packed_loss_and_gradients_equal_the_sum_over_unpacked_examples(train_examples):
    chosen = train_examples[8:14]
    model = tiny_model()
    expected_loss = torch.zeros(())
    for example in chosen:
        inputs, targets = collate([example.token_ids])
        loss = token_loss_sum(model(inputs), targets)
        loss.backward()
        expected_loss += loss.detach()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    packed = pack(chosen, max_length=256)
    assert packed.inputs.size(0) >= 2  # several rows, several examples per row
    loss = token_loss_sum(model(packed.inputs, positions=packed.positions, attn_mask=block_causal_mask(packed.doc_ids)), packed.targets)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-6, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_changing_one_example_leaves_the_others_logits_unchanged(train_examples):
    a, b, c = train_examples[20:23]
    changed_b = Example([(t + 1) % 50000 for t in b.token_ids], b.prompt_length)
    model = tiny_model().eval()

    def logits_by_example(examples):
        packed = pack(examples, max_length=1024)
        assert packed.inputs.size(0) == 1
        with torch.no_grad():
            logits = model(packed.inputs, positions=packed.positions, attn_mask=block_causal_mask(packed.doc_ids))[0]
        row = pack_rows([len(e.token_ids) for e in examples], 1024)[0]
        return {row[doc]: logits[packed.doc_ids[0] == doc] for doc in range(len(row))}

    before, after = logits_by_example([a, b, c]), logits_by_example([a, changed_b, c])
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=1e-6)
    assert not torch.allclose(after[1], before[1], atol=1e-3)


def test_block_causal_mask_keeps_attention_inside_each_example():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    expected = torch.tensor(
        [[1, 0, 0, 0, 0, 0],
         [1, 1, 0, 0, 0, 0],
         [0, 0, 1, 0, 0, 0],
         [0, 0, 1, 1, 0, 0],
         [0, 0, 1, 1, 1, 0],
         [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(block_causal_mask(doc_ids), expected[None, None])


@pytest.mark.slow  # compiles FlexAttention for CPU (its forward only: it has no CPU backward)
def test_flex_block_mask_gives_the_dense_masks_logits(train_examples):
    """The GPU path's BlockMask, checked on CPU where FlexAttention runs forward only."""
    packed = pack(train_examples[30:36], max_length=256)
    model = tiny_model().eval()
    with torch.no_grad():
        dense = model(packed.inputs, positions=packed.positions, attn_mask=block_causal_mask(packed.doc_ids))
        flex = model(packed.inputs, positions=packed.positions, attn_mask=flex_block_mask(packed.doc_ids))
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-5)


# ---- length grouping ----------------------------------------------------------------------------


def test_grouping_visits_the_plain_epochs_examples_once_each(train_examples):
    lengths = [len(e.token_ids) for e in train_examples]
    for epoch in (1, 2):
        grouped = group_by_length_order(lengths, 123, epoch, GLOBAL_BATCH)
        plain = global_batches(epoch_order(len(lengths), 123, epoch), GLOBAL_BATCH)
        assert all(len(batch) == GLOBAL_BATCH for batch in grouped)
        visited = [i for batch in grouped for i in batch]
        assert len(visited) == len(set(visited)) == len(train_examples) // GLOBAL_BATCH * GLOBAL_BATCH
        assert sorted(visited) == sorted(i for batch in plain for i in batch)


def test_grouping_is_a_pure_function_of_seed_epoch_and_global_batch(train_examples):
    lengths = [len(e.token_ids) for e in train_examples]
    first = group_by_length_order(lengths, 123, 1, GLOBAL_BATCH)
    assert group_by_length_order(lengths, 123, 1, GLOBAL_BATCH) == first
    assert group_by_length_order(lengths, 123, 2, GLOBAL_BATCH) != first
    assert group_by_length_order(lengths, 7, 1, GLOBAL_BATCH) != first
    # Whatever the world size and micro-batch, the ranks' micro-batches cover each global batch.
    for world_size, micro in ((1, 8), (1, 4), (2, 4), (4, 1)):
        for batch in first:
            pieces = [m for r in range(world_size) for m in micro_batches(rank_slice(batch, r, world_size), micro)]
            assert [i for m in pieces for i in m] == batch


def test_grouping_cuts_padding_without_a_length_trend(train_examples):
    lengths = [len(e.token_ids) for e in train_examples]

    def padding_fraction(batches):
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths[i] for b in batches for i in b) / padded

    grouped = group_by_length_order(lengths, 123, 1, GLOBAL_BATCH)
    plain = global_batches(epoch_order(len(lengths), 123, 1), GLOBAL_BATCH)
    assert padding_fraction(plain) > 0.15 and padding_fraction(grouped) < 0.03
    # Batches are shuffled among themselves: batch position and length are not correlated.
    means = torch.tensor([sum(lengths[i] for i in b) / len(b) for b in grouped])
    ranks = means.argsort().argsort().float()
    positions = torch.arange(len(grouped)).float()
    assert abs(torch.corrcoef(torch.stack([ranks, positions]))[0, 1]) < 0.3


# ---- the pipeline -------------------------------------------------------------------------------

ONE_EPOCH = ["--epochs", "1", "--eval-every", "0", "--max-new-tokens", "1"]


@pytest.mark.slow  # two one-epoch runs of the launcher (about a minute each on 2 cores)
def test_grouping_and_packing_reach_the_plain_validation_loss_after_one_epoch(tmp_path):
    """Both batching changes in one run (packing alone keeps the math: tested step by step above)."""
    final = {}
    for name, flags in {"plain": [], "grouped-packed": ["--group-by-length", "--packing"]}.items():
        out = tmp_path / name
        code, log = train([*TINY, *ONE_EPOCH, *flags, "--out", str(out)])
        assert code == 0, log[-3000:]
        end = of_type(events(out), "run_end")[-1]
        assert end["status"] == "completed" and end["step"] == 116
        final[name] = end["final_val_loss"]
    assert final["grouped-packed"] == pytest.approx(final["plain"], rel=0.01)
    assert final["grouped-packed"] != final["plain"]  # the batches did change


# ---- bench/train_throughput.py ------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


def run_bench(*args) -> list[str]:
    result = subprocess.run([sys.executable, str(BENCH), "--model", "tiny", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_train_bench_on_the_chapters_data(instruction_data, tokenizer_dir):
    lines = run_bench("--steps", 1, "--global-batch", 4, "--rows", "1,2,4", "--data", instruction_data,
                      "--tokenizer-dir", tokenizer_dir)
    for number, name in [(0, "baseline: hand-written attention"), (1, "+ SDPA"), (2, "+ fused AdamW"), (4, "+ packing")]:
        assert any(line.startswith(f"{number:>2}  {name}") for line in lines), (number, lines)
    # The features that keep the math keep the per-step losses (tests above: to 1e-4).
    for number in (1, 2, 4):
        line = next(line for line in lines if line.startswith(f"#{number}: per-step losses within"))
        assert float(line.split()[4]) < 1e-4
    assert re.fullmatch(r"ratio_vs_baseline: \d+\.\d\d", lines[-1])


def test_train_bench_on_synthetic_sequences_of_a_set_length():
    """--synthetic-length: random rows of exactly that length, no padding (MFU at 512 tokens on GPUs)."""
    lines = run_bench("--synthetic-length", 64, "--steps", 2, "--global-batch", 4, "--rows", 1)
    assert "8 synthetic examples of 64..64 tokens (mean 64.0), 2 timed steps of 4 after 1 warm-up steps, fp32 unless said" in lines
    assert "every row: 512 non-pad target tokens of the same 8 examples" in lines
    [row] = [line for line in lines if line.startswith(" 1  + SDPA")]
    assert row.split()[-6] == "64"  # the seq column: every row is 64 tokens
    assert re.fullmatch(r"ratio_vs_baseline: \d+\.\d\d", lines[-1])
