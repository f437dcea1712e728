"""The token cache: built once from the file, keyed by what the tokens depend on, published whole,
read through memory maps; then real ranks building, waiting for, sharing and reusing it.

The fast tests build caches in this process (and, where a second builder is needed, in a second
process); the slow ones run `deepspeed launch/train.py` with 2 CPU ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest
import tiktoken

from instruct import EntryError, read_entries
from testkit.paths import INSTRUCTION_DATA, REPO, TOKENIZER_DIR
from tests.trainer.launcher import TINY, events, free_port, kill_group, of_type, start, step_logged, train, wait, wait_for
from tests.trainer.test_lifecycle import heartbeat
from tests.trainer.test_pipeline import GOLDEN_LOSSES
from trainer.gpt2.tokenizer import get_tokenizer
from trainer.reporting.metrics import read_events
from trainer.training.data import InstructionDataset, split_indices, tokenize
from trainer.training.token_cache import Entries, TokenCache, look_up


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokens"


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer(TOKENIZER_DIR)


def build(path: Path, tokenizer) -> TokenCache:
    """As a run builds a cache: a JSON list's entries, checked by look_up, are not parsed again."""
    cache, count, found, checked = look_up(path, tokenizer)
    assert not found
    assert checked is None if path.suffix == ".jsonl" else checked == read_entries(path)
    cache.build(path, tokenizer, count, checked=checked)
    cache.map()
    return cache


def leftovers(cache_home: Path) -> list[str]:
    return sorted(p.name for p in cache_home.iterdir())


# ---- building and reading ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_the_cache_holds_every_examples_tokens_and_every_entry(cache_home, gpt2, tmp_path, form):
    entries = read_entries(INSTRUCTION_DATA)
    path = INSTRUCTION_DATA
    if form == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_bytes(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))
    cache = build(path, gpt2)
    assert leftovers(cache_home) == [cache.folder.name]
    manifest = cache.manifest()
    assert (manifest["entries"], manifest["tokens"]) == (1100, 62025)
    assert cache.tokens.dtype == np.uint16 and isinstance(cache.tokens, np.memmap)

    # The same examples as tokenizing the entries in memory (the chapter's tokens, test_data.py).
    in_memory = InstructionDataset(tokenize(entries, gpt2))
    cached = InstructionDataset(cache, np.arange(1100))
    assert all(cached[i] == in_memory[i] for i in range(1100))
    assert cached.lengths.tolist() == in_memory.lengths.tolist()

    # A split's entries are read back as they were in the file, one at a time.
    _, test, _ = split_indices(1100)
    read_back = Entries(cache, test)
    assert len(read_back) == 110 and list(read_back) == entries[935:1045] and read_back[-1] == entries[1044]
    with pytest.raises(IndexError):
        read_back[110]
    assert read_back.prompt_lengths.tolist() == [in_memory[i].prompt_length for i in test]


def test_a_second_look_finds_the_cache_without_reading_the_entries(cache_home, gpt2, tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(INSTRUCTION_DATA.read_bytes())
    folder = build(path, gpt2).folder
    # The entries are not checked again: the cache of these bytes was checked when it was built.
    cache, count, found, _ = look_up(path, gpt2)
    assert (cache.folder, count, found) == (folder, 1100, True)


def test_the_key_follows_the_data_and_the_tokenizer(cache_home, gpt2, tmp_path):
    """Another file or another tokenizer is another cache; the same ones, loaded again, the same."""
    changed = tmp_path / "changed.json"
    changed.write_bytes(INSTRUCTION_DATA.read_bytes().replace(b"friend", b"fiend", 1))
    state = {"name": "gpt2", "pat_str": gpt2._pat_str, "mergeable_ranks": gpt2._mergeable_ranks,
             "special_tokens": gpt2._special_tokens}
    other_special = tiktoken.Encoding(**{**state, "special_tokens": {**gpt2._special_tokens, "<|pad|>": 50257}})
    other_pattern = tiktoken.Encoding(**{**state, "pat_str": state["pat_str"].replace(r" ?\p{N}+", r" ?\p{N}")})
    folders = {
        "chapter": TokenCache.of(INSTRUCTION_DATA, gpt2).folder,
        "again": TokenCache.of(INSTRUCTION_DATA, get_tokenizer(TOKENIZER_DIR)).folder,
        "same state": TokenCache.of(INSTRUCTION_DATA, tiktoken.Encoding(**state)).folder,
        "changed data": TokenCache.of(changed, gpt2).folder,
        "other special tokens": TokenCache.of(INSTRUCTION_DATA, other_special).folder,
        "other pattern": TokenCache.of(INSTRUCTION_DATA, other_pattern).folder,
    }
    assert folders["chapter"] == folders["again"] == folders["same state"]
    assert len(set(folders.values())) == 4
    assert all(folder.parent == cache_home for folder in folders.values())

    # A tokenizer that splits numbers differently gets a cache of its own, with its own tokens.
    build(INSTRUCTION_DATA, gpt2)
    cache, count, found, _ = look_up(INSTRUCTION_DATA, other_pattern)
    assert not found
    cache.build(INSTRUCTION_DATA, other_pattern, count)
    assert len(leftovers(cache_home)) == 2


def test_bad_input_is_refused_before_anything_is_written(cache_home, gpt2, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": 3, "output": "d"}\n')
    with pytest.raises(EntryError) as raised:
        look_up(bad, gpt2)
    assert str(raised.value) == f"{bad}: entry 1: field 'input' must be a string, got int"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with pytest.raises(EntryError, match="holds no entries"):
        look_up(empty, gpt2)
    assert not cache_home.exists()


def test_a_damaged_cache_is_named_in_one_line(cache_home, gpt2):
    cache = build(INSTRUCTION_DATA, gpt2)
    tokens = cache.folder / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(ValueError) as raised:
        look_up(INSTRUCTION_DATA, gpt2)
    assert str(raised.value) == (f"{cache.folder}: a damaged token cache (its files do not match its manifest); "
                                 "delete the folder and start again to rebuild it")


def test_the_cache_is_read_only_once_mapped(cache_home, gpt2):
    cache, _, _, _ = look_up(INSTRUCTION_DATA, gpt2)
    with pytest.raises(RuntimeError, match="before the tokenize phase mapped it"):
        InstructionDataset(cache, np.arange(3))[0]


# ---- builds that die, builds that race ------------------------------------------------------------


def builder_process(between_chunks: str) -> subprocess.Popen:
    """Another process building the chapter's cache; `between_chunks` is Python run after each chunk."""
    code = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR
        from trainer.gpt2.tokenizer import get_tokenizer
        from trainer.training.token_cache import look_up
        tokenizer = get_tokenizer(TOKENIZER_DIR)
        cache, count, found, _ = look_up(INSTRUCTION_DATA, tokenizer)
        cache.build(INSTRUCTION_DATA, tokenizer, count, lambda: {between_chunks})
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_build_killed_halfway_looks_incomplete_and_is_rebuilt(cache_home, gpt2):
    killed = builder_process("os.kill(os.getpid(), signal.SIGKILL)")  # after its first chunk
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    [half] = leftovers(cache_home)
    assert half.endswith(f".{killed.pid}.tmp") and (cache_home / half / "tokens.bin").stat().st_size > 0
    cache, count, found, _ = look_up(INSTRUCTION_DATA, gpt2)
    assert not found and count == 1100
    cache.build(INSTRUCTION_DATA, gpt2, count)
    assert leftovers(cache_home) == [cache.folder.name]  # the dead build's folder is gone


def test_a_build_that_raises_leaves_nothing(cache_home, gpt2):
    cache, count, _, _ = look_up(INSTRUCTION_DATA, gpt2)

    def stop():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.build(INSTRUCTION_DATA, gpt2, count, stop)
    assert leftovers(cache_home) == []


def test_two_builders_of_one_key_publish_one_cache(cache_home, gpt2):
    """The second builder finishes while the first is halfway: the first keeps the second's cache
    (the same bytes) and discards its own."""
    cache, count, _, _ = look_up(INSTRUCTION_DATA, gpt2)
    outcomes = []

    def the_other_builder_finishes_first():
        other = builder_process("None")
        outcomes.append(other.communicate(timeout=120)[0])
        assert other.returncode == 0, outcomes[-1]

    cache.build(INSTRUCTION_DATA, gpt2, count, the_other_builder_finishes_first)
    assert leftovers(cache_home) == [cache.folder.name]
    theirs = orjson.loads((cache.folder / "manifest.json").read_bytes())
    assert theirs["entries"] == 1100 and cache.manifest() == theirs
    cache.map()
    expected = tokenize(read_entries(INSTRUCTION_DATA), gpt2)
    assert np.array_equal(cache.tokens, expected.tokens) and np.array_equal(cache.offsets, expected.offsets)


# ---- with real ranks ------------------------------------------------------------------------------

# Shuffled batches, checkpoints every 2 steps: the golden curve of test_pipeline.py, resumable.
RUN = [*TINY, "--max-steps", "6", "--save-every", "2", "--eval-every", "0", "--max-new-tokens", "2"]


@pytest.mark.slow
def test_a_build_killed_in_the_tokenize_phase_is_rebuilt_then_reused_by_a_resume_and_a_fresh_run(tmp_path, monkeypatch, no_leftovers):
    """Killed while local rank 0 builds (rank 1 waiting outside any collective), the run leaves a
    folder that looks incomplete; the next start builds the cache again; the resume after it finds
    the cache and ends on the golden curve, replayed steps logging the same losses; a fresh run
    finds it too, and a changed data file gets a cache of its own."""
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(cache_home))
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:tokenize:120")  # after the first chunk
    proc = start([*RUN, "--out", str(out)])
    try:
        wait_for(lambda: heartbeat(out, 0).get("phase") == "tokenize", 240, "rank 0 building the cache")
        wait_for(lambda: heartbeat(out, 1).get("phase") == "wait_tokenize", 10, "rank 1 waiting for it")
        assert [e["type"] for e in events(out)] == ["run_start"]  # the build runs inside the lifecycle
    finally:
        kill_group(proc, signal.SIGKILL)
    proc.communicate()
    monkeypatch.delenv("GPT2_INSTRUCT_TEST_HOLD")
    [half] = leftovers(cache_home / "tokens")
    assert half.startswith(".") and half.endswith(".tmp")

    proc = start([*RUN, "--out", str(out), "--resume"])  # no checkpoint yet: the run starts over
    try:
        wait_for(lambda: step_logged(out, 3), 240, "step 3")  # after the checkpoint at step 2
    finally:
        kill_group(proc, signal.SIGKILL)
    log, _ = proc.communicate()
    assert "tokenizing instruction-data.json: 1,100 entries into the token cache" in log
    assert "token cache     built on" in log
    [key] = leftovers(cache_home / "tokens")
    assert not key.startswith(".")

    code, log = train([*RUN, "--out", str(out), "--resume"])
    assert code == 0, log[-3000:]
    assert f"token cache     found: 1,100 entries, 62,025 tokens, {cache_home / 'tokens' / key}" in log
    assert "tokenizing" not in log
    losses: dict[int, float] = {}
    for e in of_type(events(out), "train"):
        assert losses.setdefault(e["step"], e["loss"]) == e["loss"], f"step {e['step']} replayed differently"
    assert [losses[step] for step in range(1, 7)] == pytest.approx(GOLDEN_LOSSES, abs=1e-5)
    starts = of_type(events(out), "run_start")
    assert [(s["attempt"], s["resumed_from_step"]) for s in starts] == [(1, 0), (2, 0), (3, 2)]

    # A fresh run (another directory) finds the cache too and trains on the same batches; the data
    # file changed by one byte is tokenized into a cache of its own.
    changed = tmp_path / "changed.json"
    changed.write_bytes(INSTRUCTION_DATA.read_bytes().replace(b"friend", b"fiend", 1))
    for data, name in ((INSTRUCTION_DATA, "fresh"), (changed, "changed")):
        args = [str(data) if a == str(INSTRUCTION_DATA) else a for a in RUN]
        proc = start([*args, "--out", str(tmp_path / name)])
        try:
            wait_for(lambda: step_logged(tmp_path / name, 2), 240, f"step 2 of the {name} run")
        finally:
            kill_group(proc, signal.SIGKILL)
        log, _ = proc.communicate()
        losses = [e["loss"] for e in of_type(read_events(tmp_path / name / "metrics.jsonl"), "train")]
        if name == "fresh":
            assert f"token cache     found: 1,100 entries, 62,025 tokens, {cache_home / 'tokens' / key}" in log
            assert "tokenizing" not in log and losses[:2] == pytest.approx(GOLDEN_LOSSES[:2], abs=1e-5)
    assert "tokenizing changed.json: 1,100 entries into the token cache" in log
    assert len(leftovers(cache_home / "tokens")) == 2 and key in leftovers(cache_home / "tokens")


@pytest.mark.slow
def test_two_nodes_each_build_their_own_cache_or_find_one(tmp_path, monkeypatch, gpt2):
    """Two launchers on loopback as two nodes: node 0 finds the cache in its cache folder, node 1
    (a node with its own disk) builds one in its own; the run trains on both."""
    shared, own = tmp_path / "shared-cache", tmp_path / "node1-cache"
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(shared))
    build(INSTRUCTION_DATA, gpt2)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    out = tmp_path / "run"
    port = str(free_port())
    nodes = []
    for node_rank, cache in enumerate((shared, own)):
        monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(cache))
        launcher = ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
                    "--master_addr", "127.0.0.1", "--master_port", port]
        nodes.append(start([*TINY, "--max-steps", "2", "--eval-every", "0", "--max-new-tokens", "2",
                            "--out", str(out)], ranks=1, launcher_args=launcher))
    (code0, log0), (code1, log1) = [wait(p, timeout=300) for p in nodes]
    assert code0 == 0 and code1 == 0, (log0[-2000:], log1[-2000:])
    assert "token cache     found" in log0 and "tokenizing" not in log0
    assert "tokenizing instruction-data.json: 1,100 entries into the token cache" in log1
    assert leftovers(own / "tokens") == leftovers(shared / "tokens")  # one key, complete on both
    assert events(out)[-1]["status"] == "completed" and len(of_type(events(out), "train")) == 2


@pytest.mark.slow
def test_dry_run_plans_for_a_cluster_and_says_whether_the_cache_was_there(tmp_path, monkeypatch):
    """--dry-run --world-size 16 from one process: gpt2-xl's plan for 2 nodes x 8 GPUs; the first
    dry run builds the cache, the second finds it, a changed data file gets a cache of its own."""
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))
    changed = tmp_path / "changed.json"
    changed.write_bytes(INSTRUCTION_DATA.read_bytes().replace(b"friend", b"fiend", 1))
    plans = []
    for data in (INSTRUCTION_DATA, INSTRUCTION_DATA, changed):
        args = [a if a != str(INSTRUCTION_DATA) else str(data) for a in TINY if a not in ("--model", "tiny")]
        proc = subprocess.run(
            [sys.executable, str(REPO / "launch" / "train.py"), *args, "--model", "gpt2-xl", "--precision", "bf16",
             "--global-batch", "128", "--micro-batch", "8", "--dry-run", "--world-size", "16"],
            capture_output=True, text=True, timeout=180, cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        plans.append(proc.stdout)
    first = plans[0]
    assert "gpt2-xl (1,557,611,200 parameters), bf16" in first
    assert "global 128 = micro 8 x accumulation 1 x world 16" in first
    assert "7 per epoch, 14 in total (2 epochs)" in first
    assert "  ZeRO-2      4.17 GiB (ZeRO paper)" in first and "  ZeRO-3      1.45 GiB (ZeRO paper)" in first
    assert "token cache     built on" in first and "token cache     found: 1,100 entries" in plans[1]
    assert "token cache     built on" in plans[2]
    assert len(leftovers(tmp_path / "cache" / "tokens")) == 2
