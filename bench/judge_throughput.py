"""Judge throughput: `--concurrency auto` against the sequential baseline, on the fake Ollama.

The fake server (tests/judge/fake_ollama.py, its own process) serves S = 8 requests at a time
with L = 0.2 s each, so no client can exceed S/L = 40 requests/s; the goal is at least
0.9 S/L = 36 requests/s, held over the whole run with flat memory. The baseline is the
chapter's way, one request at a time (`--concurrency 1`), on the first 200 entries, measured
in the same run.

At the goal rate 50,000 entries take about 23 minutes, so the entry count is a flag: the
default 5,000 runs in about 3 minutes; `--entries 50000` is the full-size run. The output says
which count ran.

    python bench/judge_throughput.py [--entries 5000]

Prints the figures and ends with `ratio_vs_baseline: X.XX` (auto requests/s over sequential).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent


def write_entries(path: Path, count: int) -> None:
    entries = [
        {"instruction": f"Rewrite sentence {i} in the passive voice.", "input": f"The cat chased mouse {i}.",
         "output": f"Mouse {i} was chased by the cat.", "model_response": f"Mouse {i} was chased."}
        for i in range(count)
    ]
    path.write_bytes(orjson.dumps(entries))


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_judge(input_path: Path, out_path: Path, url: str, concurrency: str) -> tuple[dict, list]:
    """Run the CLI; sample (seconds, journal lines, RSS MiB) every second; return its summary."""
    journal = out_path.with_name(out_path.name[: -len(".json")] + ".journal.jsonl")
    process = subprocess.Popen(
        [sys.executable, "-m", "judge", "score", str(input_path), "--url", url, "--out", str(out_path),
         "--concurrency", concurrency, "--quiet"],
        cwd=REPO, stdout=subprocess.DEVNULL,
    )
    samples, start = [], time.monotonic()
    while process.poll() is None:
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        samples.append((time.monotonic() - start, lines, rss_mib(process.pid)))
        time.sleep(1.0)
    if process.returncode != 0:
        raise SystemExit(f"judge exited with {process.returncode}")
    return orjson.loads(out_path.with_name(out_path.name[: -len(".json")] + ".summary.json").read_bytes()), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=5000, help="entries scored with auto (default 5000)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--baseline-entries", type=int, default=200)
    args = parser.parse_args()
    goal = 0.9 * args.slots / args.latency

    with tempfile.TemporaryDirectory(prefix="judge-bench-") as tmp:
        tmp = Path(tmp)
        write_entries(tmp / "entries.json", args.entries)
        write_entries(tmp / "baseline.json", args.baseline_entries)
        port_file = tmp / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.judge.fake_ollama", "--slots", str(args.slots),
             "--latency", str(args.latency), "--port-file", str(port_file)],
            cwd=REPO, stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("fake Ollama server did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"

            baseline, _ = run_judge(tmp / "baseline.json", tmp / "baseline.scored.json", url, "1")
            auto, samples = run_judge(tmp / "entries.json", tmp / "entries.scored.json", url, "auto")
        finally:
            server.terminate()
            server.wait(10)

    # Steady rate per 10% of the run, from the journal's growth (skipping the first window).
    windows = []
    scoring = [s for s in samples if 0 < s[1] < args.entries]
    if len(scoring) >= 3:
        step = max(1, len(scoring) // 10)
        for a, b in zip(scoring[::step], scoring[step::step]):
            windows.append((b[1] - a[1]) / (b[0] - a[0]))
    rss = [s[2] for s in scoring if s[2] is not None]  # while scoring (not the interpreter's start)
    print(f"fake Ollama: S={args.slots} slots, L={args.latency} s -> S/L={args.slots / args.latency:.1f} req/s, "
          f"goal 0.9 S/L = {goal:.1f} req/s")
    print(f"sequential (--concurrency 1), {args.baseline_entries} entries: "
          f"{baseline['requests_per_s']:.2f} req/s in {baseline['wall_s']:.1f} s")
    print(f"auto, {args.entries} entries: {auto['requests_per_s']:.2f} req/s in {auto['wall_s']:.1f} s "
          f"(whole run: startup, server check, statistics, writing)")
    if windows:
        print(f"auto, steady rate per 10% of the run: min {min(windows[1:] or windows):.2f}, "
              f"max {max(windows):.2f} req/s ({', '.join(f'{w:.1f}' for w in windows)})")
    if rss:
        print(f"judge RSS while scoring: first sample {rss[0]:.1f} MiB, at 50% {rss[len(rss) // 2]:.1f} MiB, "
              f"peak {max(rss):.1f} MiB, last {rss[-1]:.1f} MiB")
    print(f"goal met: {auto['requests_per_s'] >= goal}")
    print(f"ratio_vs_baseline: {auto['requests_per_s'] / baseline['requests_per_s']:.2f}")


if __name__ == "__main__":
    main()
