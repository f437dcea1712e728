"""Flat memory: the judge's peak Python memory does not grow with the number of entries (JSONL
is streamed, prompts and results stay on disk, the scored file is written as a stream). The
figure at a million entries is the benchmark's (bench/judge_throughput.py)."""

from __future__ import annotations

import subprocess
import sys

import orjson

from testkit.paths import REPO
from tests.judge.helpers import expected, write_entries

# Runs the command line and reports its peak resident memory (VmHWM, kB) on the last line
# (not ru_maxrss: Linux carries that over from the forked parent across exec).
PEAK = """
import runpy, sys
sys.argv = ["judge", *sys.argv[1:]]
try:
    runpy.run_module("judge", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def peak_kib(path, url) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, "score", str(path), "--url", url, "--quiet",
                           "--concurrency", "8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_entries(tmp_path, fake_ollama):
    server = fake_ollama(slots=8, latency_s=0.0, record=False)
    peaks = {}
    for count in (2000, 20000):
        path = tmp_path / f"in{count}.jsonl"
        entries = write_entries(tmp_path / "list.json", count)
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
        peaks[count] = peak_kib(path, server.url)
        scored = orjson.loads(path.with_name(f"in{count}.scored.json").read_bytes())
        assert [e["model_response_score"] for e in scored] == [expected(e) for e in entries]
    # Ten times the entries: at most 6 MiB more at the peak (SQLite's page cache fills up to its
    # 2 MiB, allocators vary); holding the entries, prompts and results took ~2 KB each: 36 MiB.
    assert peaks[20000] - peaks[2000] < 6 * 1024, peaks
