"""Opening a 1,000,000-event run with the dashboard: time until the last step is on screen, and
peak memory (targets: under 10 s, under 300 MB RSS).

    python bench/tui_open.py [--events 1000000]

The run is generated in a temporary directory (not in the repo): train events for every step,
an eval and a sample every 100 steps, a checkpoint every 1,000, two ranks' heartbeats. The app
runs headless at 80x24 in a child process, so that its peak RSS is its own. Baseline, measured
in the same run: parsing the same metrics.jsonl line by line with orjson into a list (the read
and parse floor, keeping every event). ratio_vs_baseline = open time / baseline time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from testkit.runs import BufferedRunWriter  # noqa: E402


def generate(run_dir: Path, events: int) -> int:
    """Write a run of about `events` metrics events; returns the last step."""
    writer = BufferedRunWriter(run_dir, total_steps=events)
    writer.start()
    step = 0
    written = 1
    while written < events:
        step += 1
        writer.train(step, seconds=0.05)
        written += 1
        if step % 100 == 0:
            writer.eval(step)
            writer.sample(step, f"The meal is cooked by the chef every day. ({step})")
            written += 2
        if step % 1000 == 0:
            writer.checkpoint(step)
            writer.heartbeat(0, step, "backward")
            writer.heartbeat(1, step, "backward")
            writer.flush()
            written += 1
    writer.flush()
    return step


def measure(run_dir: Path, last_step: int) -> dict:
    """In the child: start the app, wait until the last step is drawn."""
    start = time.perf_counter()
    from testkit.screens import screen_text  # imports textual: part of the cost
    from tui.app import DashboardApp, DashboardScreen
    from tui.widgets import RunHeader

    app = DashboardApp(run_dir)  # the defaults a user gets: poll and redraw every second
    result = {}

    async def run() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            # Look at the header's data, cheaply, rather than render the screen every time.
            while not (isinstance(app.screen, DashboardScreen) and app.screen.query_one(RunHeader).step == last_step):
                await pilot.pause(0.05)
            await pilot.pause()  # the refresh it asked for
            result["open_s"] = time.perf_counter() - start
            assert f"step {last_step}/" in screen_text(app)
            result["events_read"] = app.screen.state.events_read
            result["screen"] = screen_text(app)

    asyncio.run(run())
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss, it does not carry over
    the parent's peak through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def baseline(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        events = [orjson.loads(line) for line in f]
    assert events
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("RUN_DIR", "LAST_STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), int(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "20261125-140000-gpt2-medium"
        start = time.perf_counter()
        last_step = generate(run_dir, args.events)
        size_mb = (run_dir / "metrics.jsonl").stat().st_size / 2**20
        lines = sum(1 for _ in open(run_dir / "metrics.jsonl", "rb"))
        print(f"generated {lines} events ({size_mb:.0f} MB) in {time.perf_counter() - start:.1f} s")
        child = subprocess.run([sys.executable, __file__, "--child", str(run_dir), str(last_step)],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.splitlines()[-1])
        base_s = baseline(run_dir / "metrics.jsonl")
    print(result["screen"])
    print(f"events read: {result['events_read']}")
    print(f"open until the last step is on screen: {result['open_s']:.2f} s (target < 10 s)")
    print(f"peak RSS: {result['peak_rss_mb']:.0f} MB (target < 300 MB)")
    print(f"baseline (orjson parse of every line into a list): {base_s:.2f} s")
    print(f"ratio_vs_baseline: {result['open_s'] / base_s:.2f}")


if __name__ == "__main__":
    main()
