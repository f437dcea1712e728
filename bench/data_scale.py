"""Data at scale: the token cache against every rank loading and tokenizing the file, same run.

The workload: `--entries` synthetic Alpaca-style entries (default 1,000,000) in a JSONL file, each
made of the instruction, the input and the output of three entries of the chapter's data drawn at
random (seeded), the output numbered so that no two entries are alike. Then:

1. Training starts, the real launcher, 2 CPU ranks, the tiny preset, 3 steps (then stopped), each
   timed from the launcher's start to the first `train` event in metrics.jsonl, with each rank's
   largest resident memory (heartbeats' `rss_bytes`) until then:
   - first starts, which build the token caches: the chapter's 1,100 entries, then the N entries
     (the build's tokens/s from its manifest);
   - `--rounds` pairs of second starts, which find the caches: the chapter's entries (the
     reference the targets are measured against), then the N entries. A pair runs back to back,
     so that other work on a shared machine slows both alike; the median pair is the figure.
2. The data alone, in 2 processes at once as 2 ranks would (each after importing what a rank
   imports): the baseline, this project's load before the token cache (every rank read the whole
   file, checked it and tokenized it into Python lists of token ids, keeping the entries), against
   the cached path (`prepare_data` and the `tokenize` phase finding the cache): seconds until the
   data is ready, and the resident memory it added.

The last line, `ratio_vs_baseline`, is the baseline's seconds to ready data over the cached
path's (the slower of the 2 processes each).

    python bench/data_scale.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.launcher import kill_group, start  # noqa: E402
from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR  # noqa: E402

GB = 1e9
STEPS = 3


def generate(count: int, path: Path, seed: int = 123) -> None:
    """`count` Alpaca-style entries recombined from the chapter's, as JSONL."""
    chapter = orjson.loads(INSTRUCTION_DATA.read_bytes())
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(count):
            a, b, c = (chapter[rng.randrange(len(chapter))] for _ in range(3))
            entry = {"instruction": a["instruction"], "input": b["input"], "output": f"{c['output']} ({i})"}
            f.write(orjson.dumps(entry) + b"\n")


# ---- 1. training starts under the launcher -----------------------------------------------------------


@dataclass
class Start:
    name: str
    first_train_s: float  # from the launcher's start to the first train event
    rss_bytes: list[int]  # each rank's largest rss_bytes until its last heartbeat before the stop
    log: str


def read_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_bytes().splitlines() if path.is_file() else []:
        try:
            lines.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # being written
    return lines


def training_start(name: str, data: Path, cache: Path, out: Path) -> Start:
    """A 2-rank run until its third step, then killed: when its first step came, and its memory."""
    args = ["--model", "tiny", "--weights", "none", "--data", str(data), "--tokenizer-dir", str(TOKENIZER_DIR),
            "--max-steps", str(STEPS), "--eval-every", "0", "--max-new-tokens", "1", "--out", str(out)]
    print(f"measuring {name}", flush=True)
    started = time.time()
    proc = start(args, extra_env={"GPT2_INSTRUCT_CACHE": str(cache)})
    try:
        while len(trains := [e for e in read_lines(out / "metrics.jsonl") if e["type"] == "train"]) < STEPS:
            if proc.poll() is not None:
                raise SystemExit(f"{name}: the run ended before step {STEPS}:\n{proc.communicate()[0][-3000:]}")
            time.sleep(0.2)
        time.sleep(2.5)  # one more heartbeat of each rank
    finally:
        kill_group(proc, signal.SIGKILL)
    log = proc.communicate()[0]
    rss = [max(beat["rss_bytes"] for beat in read_lines(out / "ranks" / f"rank-{rank}.jsonl")) for rank in (0, 1)]
    return Start(name, trains[0]["time"] - started, rss, log)


# ---- 2. the data alone, 2 processes at once --------------------------------------------------------


def todays_load(data: Path) -> tuple:
    """The baseline: each rank's load before the token cache (trainer/lifecycle/pipeline.py's
    prepare_data then): the whole file read and checked, split, and the train and validation
    examples tokenized into Python lists of token ids, the entries kept for generation."""
    from instruct import format_prompt, read_entries
    from trainer.gpt2.tokenizer import get_tokenizer
    from trainer.training.data import Example, split_entries

    tokenizer = get_tokenizer(TOKENIZER_DIR)
    entries = read_entries(data)
    train, test, val = split_entries(entries)

    def examples(split: list[dict]) -> list[Example]:
        prompts = tokenizer.encode_ordinary_batch([format_prompt(e) for e in split])
        responses = tokenizer.encode_ordinary_batch([e["output"] for e in split])
        return [Example(p + r, len(p)) for p, r in zip(prompts, responses)]

    return entries, examples(train), examples(val), test


def cached_load(data: Path) -> object:
    """The token cache's path: plan's prepare_data and the tokenize phase, in a process group of one."""
    from trainer.lifecycle.coordination import Coordinator
    from trainer.lifecycle.pipeline import prepare_data, tokenize_data
    from trainer.lifecycle.signals import StopSignals
    from trainer.training import distributed
    from trainer.training.config import TrainConfig
    from trainer.training.faults import TestFaults

    config = TrainConfig(data=str(data), tokenizer_dir=str(TOKENIZER_DIR))
    dist_info = distributed.init(60)
    loaded = prepare_data(config, dist_info)
    tokenize_data(loaded, Coordinator(dist_info, StopSignals(), namespace="bench"), config, TestFaults())
    _ = loaded.train.lengths  # what the first epoch reads before its first step
    return loaded


def worker(kind: str, data: Path) -> None:
    """One process of part 2: imports as a rank does, loads, prints its figures as JSON."""
    import deepspeed  # noqa: F401
    import psutil
    import torch  # noqa: F401

    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    loaded = (todays_load if kind == "today" else cached_load)(data)
    seconds = time.perf_counter() - started
    print(orjson.dumps({"seconds": seconds, "rss_before": before, "rss_after": process.memory_info().rss}).decode())
    del loaded


def side_by_side(kind: str, data: Path, cache: Path) -> list[dict]:
    """Two workers at once, as two ranks of a node."""
    environment = {**os.environ, "GPT2_INSTRUCT_CACHE": str(cache), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
                   "MASTER_ADDR": "127.0.0.1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", kind, str(data)], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"the {kind} worker failed (exit {proc.returncode})")
        results.append(orjson.loads(out.strip().splitlines()[-1]))
    return results


# ---- the report -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="synthetic entries to generate")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of second starts (chapter, then N entries)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return

    workdir = Path(tempfile.mkdtemp(prefix="data-scale-"))
    try:
        report(args.entries, args.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(count: int, rounds: int, workdir: Path) -> None:
    data, cache = workdir / "entries.jsonl", workdir / "cache"
    started = time.perf_counter()
    generate(count, data)
    print(f"{count:,} synthetic entries, {data.stat().st_size / 1e6:,.0f} MB of JSONL, generated in "
          f"{time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")

    chapter_cache = workdir / "chapter-cache"
    starts = [training_start("the chapter's 1,100 entries, first start", INSTRUCTION_DATA, chapter_cache, workdir / "c"),
              training_start(f"{count:,} entries, first start", data, cache, workdir / "n")]
    pairs = [(training_start(f"round {r}: the chapter's 1,100 entries, cache found", INSTRUCTION_DATA, chapter_cache,
                             workdir / f"c{r}"),
              training_start(f"round {r}: {count:,} entries, cache found", data, cache, workdir / f"n{r}"))
             for r in range(1, rounds + 1)]
    pairs.sort(key=lambda pair: pair[1].first_train_s - pair[0].first_train_s)
    reference, second = pairs[len(pairs) // 2]
    [manifest_path] = (cache / "tokens").glob("*/manifest.json")
    manifest = orjson.loads(manifest_path.read_bytes())
    print("measuring the data alone, 2 processes at once: the baseline, then the cache found", flush=True)
    today = side_by_side("today", data, cache)
    cached = side_by_side("cached", data, cache)

    print(f"\n1. 2 ranks (tiny preset, CPU), from the launcher's start to the first train event; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'start':<54}{'first train s':>14}{'vs chapter s':>14}{'rank 0 RSS GB':>15}{'rank 1 RSS GB':>15}")
    rows = [(timed, starts[0]) for timed in starts]  # (a start, the chapter's start it is compared with)
    rows += [(timed, chapter) for chapter, n in sorted(pairs, key=lambda pair: pair[0].name) for timed in (chapter, n)]
    for timed, chapter in rows:
        print(f"{timed.name:<54}{timed.first_train_s:>14.1f}{timed.first_train_s - chapter.first_train_s:>+14.1f}"
              f"{timed.rss_bytes[0] / GB:>15.3f}{timed.rss_bytes[1] / GB:>15.3f}")
    print(f"cache build: {manifest['entries']:,} entries, {manifest['tokens']:,} tokens in {manifest['seconds']:.1f} s, "
          f"{manifest['tokens_per_s']:,} tokens/s; the cache: "
          f"{sum(f.stat().st_size for f in manifest_path.parent.iterdir()) / 1e6:,.0f} MB")

    print(f"\n2. the data of {count:,} entries alone, 2 processes at once (each after importing torch and deepspeed)")
    print(f"{'path':<58}{'seconds':>9}{'RSS added GB':>14}{'RSS GB':>9}")
    for name, results in (("baseline: each rank reads and tokenizes the file", today),
                          ("token cache found, memory-mapped", cached)):
        for i, r in enumerate(results):
            print(f"{name + f' (process {i})':<58}{r['seconds']:>9.1f}{(r['rss_after'] - r['rss_before']) / GB:>14.3f}"
                  f"{r['rss_after'] / GB:>9.3f}")
    slowest = lambda results: max(r["seconds"] for r in results)  # noqa: E731
    print(f"\ntargets (the median round): second start {second.first_train_s - reference.first_train_s:+.1f} s "
          f"after the chapter's (at most +10 s), rank RSS {max(second.rss_bytes) / GB:.2f} GB (at most 1.0 GB)")
    print(f"ratio_vs_baseline: {slowest(today) / slowest(cached):.2f}")


if __name__ == "__main__":
    main()
