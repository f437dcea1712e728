"""Judge throughput: `python -m judge` against fake Ollama servers, beside the sequential baseline.

Each fake server (testkit/fake_ollama.py, its own process) serves S requests at a time with
L seconds each, so no client can exceed S/L requests/s from it. The baseline is the chapter's
way, one request at a time (`--concurrency 1`), on the first server and 200 entries, measured
in the same run. The input is JSONL (read as a stream: the judge's memory stays flat).

    python bench/judge_throughput.py                      # 5,000 entries, auto, one server of 8 slots x 0.2 s
    python bench/judge_throughput.py --fault-rate 0.2 --entries 440 --concurrency 8
    python bench/judge_throughput.py --servers 2,4,8 --entries 880 [--kill-after 4]
    python bench/judge_throughput.py --entries 1000000 --latency 0

Goals (printed with each run), over the time the judge was sending (the summary's `send_s`:
the rest of its wall time is reading, checking the servers, writing and the statistics, whose
bootstrap takes about a second at any size; the whole-run figures are printed too): without
faults, one server, at least 0.9 S/L requests/s; with `--fault-rate`, the servers busy at
least 0.85 of that time (slot-seconds used over slots x time; the faults cost slots: dropped
connections, error lines, broken lines; and instant 500s); with several servers, at least 0.85
of their summed S/L; always, every entry scored once with its right score. Prints the judge's
resident memory and CPU time and ends with `ratio_vs_baseline: X.XX` (requests/s while sending,
over sequential).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from judge.prompt import CHAPTER_TEMPLATE, render  # noqa: E402
from testkit.fake_ollama import expected_score  # noqa: E402


def entry(i: int) -> dict:
    return {"instruction": f"Rewrite sentence {i} in the passive voice.", "input": f"The cat chased mouse {i}.",
            "output": f"Mouse {i} was chased by the cat.", "model_response": f"Mouse {i} was chased."}


def write_entries(path: Path, count: int) -> None:
    with open(path, "wb") as f:
        for i in range(count):
            f.write(orjson.dumps(entry(i)) + b"\n")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class FakeServer:
    """One fake Ollama process; `stats()` is its slot and completion counts."""

    def __init__(self, tmp: Path, index: int, slots: int, latency: float, fault_rate: float):
        self.slots = slots
        port_file = tmp / f"port{index}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testkit.fake_ollama", "--slots", str(slots), "--latency", str(latency),
             "--fault-rate", str(fault_rate), "--seed", str(index), "--port-file", str(port_file)],
            cwd=REPO, stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("fake Ollama server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"
        self.last_stats = self.stats()

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/fake/stats", timeout=10) as reply:
            return orjson.loads(reply.read())

    def kill(self) -> None:
        """Its last counts, then SIGKILL: the connections in flight die with it."""
        self.last_stats = self.stats()
        self.process.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.last_stats = self.stats()
            self.process.terminate()
        self.process.wait(10)


def run_judge(input_path: Path, out_path: Path, urls: list[str], concurrency: str,
              kill: tuple[float, FakeServer] | None = None) -> tuple[dict, list, float]:
    """Run the CLI; sample (seconds, journal lines, RSS MiB) every second; return its summary,
    the samples and the CPU seconds it used (user + system: less disturbed by other load than
    the wall time)."""
    journal = out_path.with_name(out_path.name[: -len(".json")] + ".journal.jsonl")
    command = [sys.executable, "-m", "judge", "score", str(input_path), "--out", str(out_path),
               "--concurrency", concurrency, "--quiet"]
    for url in urls:
        command += ["--url", url]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    killer = threading.Timer(kill[0], kill[1].kill) if kill else None
    if killer:
        killer.start()
    samples, start = [], time.monotonic()
    while (waited := os.wait4(process.pid, os.WNOHANG))[0] == 0:
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        samples.append((time.monotonic() - start, lines, rss_mib(process.pid)))
        time.sleep(1.0)
    _, status, usage = waited
    process.returncode = os.waitstatus_to_exitcode(status)
    if killer:
        killer.cancel()
    if process.returncode != 0:
        raise SystemExit(f"judge exited with {process.returncode}")
    summary = orjson.loads(out_path.with_name(out_path.name[: -len(".json")] + ".summary.json").read_bytes())
    return summary, samples, usage.ru_utime + usage.ru_stime


def right_scores(scored_path: Path, count: int) -> int:
    """Entries of the scored file whose score is the fake server's answer for their prompt."""
    scored = orjson.loads(scored_path.read_bytes())
    return sum(
        e["model_response_score"] == expected_score(render(CHAPTER_TEMPLATE, entry(i), entry(i)["model_response"]))
        for i, e in enumerate(scored[:count])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=5000, help="entries scored (default 5000)")
    parser.add_argument("--slots", type=int, default=8, help="slots of the one server (default 8)")
    parser.add_argument("--servers", help="several servers: their slots, e.g. 2,4,8 (overrides --slots)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request (default 0.2)")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of requests that fail: dropped, error line, broken line (each after its "
                             "service time) or an instant 500 (default 0)")
    parser.add_argument("--concurrency", default="auto", help="the judge's --concurrency (default auto)")
    parser.add_argument("--kill-after", type=float, metavar="S", help="SIGKILL the last server S seconds in")
    parser.add_argument("--baseline-entries", type=int, default=200)
    args = parser.parse_args()
    slots = [int(s) for s in args.servers.split(",")] if args.servers else [args.slots]
    capacity = sum(slots) / args.latency if args.latency > 0 else float("inf")

    with tempfile.TemporaryDirectory(prefix="judge-bench-") as tmp:
        tmp = Path(tmp)
        write_entries(tmp / "entries.jsonl", args.entries)
        write_entries(tmp / "baseline.jsonl", args.baseline_entries)
        servers = []
        try:
            for index, n in enumerate(slots):
                servers.append(FakeServer(tmp, index, n, args.latency, args.fault_rate))
            baseline, _, _ = run_judge(tmp / "baseline.jsonl", tmp / "baseline.scored.json", [servers[0].url], "1")
            before = [s.stats() for s in servers]
            kill = (args.kill_after, servers[-1]) if args.kill_after is not None else None
            run, samples, cpu_s = run_judge(tmp / "entries.jsonl", tmp / "entries.scored.json", [s.url for s in servers],
                                     args.concurrency, kill)
            right = right_scores(tmp / "entries.scored.json", args.entries)
        finally:
            for server in servers:
                server.stop()
    slot_seconds = sum(s.last_stats["slot_seconds"] - b["slot_seconds"] for s, b in zip(servers, before))
    completions = sum(s.last_stats["completions"] - b["completions"] for s, b in zip(servers, before))
    busy = slot_seconds / (sum(slots) * run["send_s"])
    send_rate = run["requests"] / run["send_s"]
    figures = run["keys"]["model_response"]

    print(f"fake Ollama: {len(slots)} server(s) of {', '.join(map(str, slots))} slots, L={args.latency} s -> "
          f"S/L = {capacity:.1f} req/s; fault rate {args.fault_rate}"
          + (f"; the last server killed {args.kill_after} s in" if kill else ""))
    print(f"sequential (--concurrency 1), {args.baseline_entries} entries: "
          f"{baseline['requests_per_s']:.2f} req/s in {baseline['wall_s']:.1f} s")
    print(f"--concurrency {args.concurrency}, {args.entries} entries: {run['requests']} requests "
          f"({run['retries']} retries) sent in {run['send_s']:.1f} s: {send_rate:.2f} req/s; the whole run "
          f"(reading, server checks, sending, writing, statistics) {run['wall_s']:.1f} s: "
          f"{run['requests_per_s']:.2f} req/s; the judge used {cpu_s:.1f} CPU seconds")
    print(f"entries: {figures['scored']} scored, {figures['failed']} failed, {right} with the right score; "
          f"replies counted by the servers: {completions}" + (" (the killed one's up to its kill)" if kill else ""))
    print(f"servers busy {busy:.3f} of the time the judge was sending (slot-seconds {slot_seconds:.1f} / "
          f"({sum(slots)} slots x {run['send_s']:.1f} s)); {slot_seconds / (sum(slots) * run['wall_s']):.3f} "
          f"of the whole run")
    for server in run["servers"]:
        print(f"  {server['url']}: {server['requests']} requests, {server['failures']} failed, "
              f"{server['requests_per_s']:.1f} req/s, times down {server['times_down']}")
    scoring = [s for s in samples if 0 < s[1] < args.entries]
    if len(scoring) >= 3:
        step = max(1, len(scoring) // 10)
        windows = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(scoring[::step], scoring[step::step])]
        print(f"steady rate per 10% of the run: min {min(windows[1:] or windows):.2f}, max {max(windows):.2f} "
              f"req/s ({', '.join(f'{w:.1f}' for w in windows)})")
    rss = [s[2] for s in samples if s[2] is not None]
    if rss:
        print(f"judge RSS: first sample {rss[0]:.1f} MiB, at 50% {rss[len(rss) // 2]:.1f} MiB, "
              f"peak {max(rss):.1f} MiB, last {rss[-1]:.1f} MiB ({len(rss)} samples, one a second)")
    every_entry = figures["scored"] == right == args.entries
    if args.fault_rate:
        print(f"goal (busy >= 0.85, every entry scored right) met: {busy >= 0.85 and every_entry}")
    elif len(slots) > 1 and not kill:
        print(f"goal (sending at >= 0.85 S/L = {0.85 * capacity:.1f} req/s, every entry scored right) met: "
              f"{send_rate >= 0.85 * capacity and every_entry}")
    elif args.latency > 0 and not kill:
        print(f"goal (sending at >= 0.9 S/L = {0.9 * capacity:.1f} req/s) met: {send_rate >= 0.9 * capacity}")
    else:
        print(f"goal (every entry scored right) met: {every_entry}")
    print(f"ratio_vs_baseline: {send_rate / (baseline['requests'] / baseline['send_s']):.2f}")


if __name__ == "__main__":
    main()
