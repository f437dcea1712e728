"""CPU used by the dashboard following a live run that gains 20 events/s (target: under 5% of
one core), with the app in a real terminal: tmux at 80x24.

    python bench/tui_follow.py [--seconds 30]

A run of 10,000 steps is generated in a temporary directory (not in the repo) and opened with
`python -m tui` (default settings: poll and redraw every second) in a detached tmux session.
Baseline, measured in the same run: the same app over the same time while the run is silent.
Then a writer appends 20 events/s to metrics.jsonl (train steps, an eval and a sample every
100) plus a heartbeat per rank every 2 s, and the app's CPU time (psutil, user + system) is
measured over `--seconds`. ratio_vs_baseline = CPU while following / CPU while idle.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from testkit.runs import BufferedRunWriter, RunWriter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SESSION = "tui-follow-bench"
STEPS = 10_000


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def wait_for_screen(text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", SESSION)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} not on screen after {timeout} s:\n{screen}")


def cpu_percent(process: psutil.Process, seconds: float, during=None) -> float:
    """% of one core used by `process` over `seconds` (while `during(t)` runs each 50 ms)."""
    before = process.cpu_times()
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        if during is not None:
            during(elapsed)
        time.sleep(0.05)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("tmux not found (apt-get install -y tmux)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "20261125-140000-gpt2-medium"
        buffered = BufferedRunWriter(run_dir, total_steps=STEPS * 10)
        buffered.time = time.time() - STEPS * 0.05
        buffered.start()
        buffered.steps(1, STEPS, eval_every=100)
        buffered.flush()
        writer = RunWriter(run_dir, total_steps=STEPS * 10, attempt=1, time=time.time(),
                           start_time=buffered.start_time, tokens_total=buffered.tokens_total)
        tmux("new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24",
             f"cd {REPO} && exec {sys.executable} -m tui {run_dir}")
        try:
            app = psutil.Process(int(tmux("display-message", "-p", "-t", SESSION, "#{pane_pid}")))
            wait_for_screen(f"step {STEPS}/")
            time.sleep(2)  # let the first full redraw settle
            idle = cpu_percent(app, args.seconds / 2)

            step = STEPS
            written = {"events": 0, "heartbeats": 0}

            def write(elapsed: float) -> None:
                nonlocal step
                while written["events"] < elapsed * 20:  # 20 events/s, evenly
                    writer.time = time.time()
                    if written["events"] % 20 == 19 and step % 100 == 0:
                        writer.eval(step)
                    else:
                        step += 1
                        writer.train(step, seconds=0.05)
                    written["events"] += 1
                while written["heartbeats"] < elapsed / 2:
                    for rank in (0, 1):
                        writer.heartbeat(rank, step, "forward")
                    written["heartbeats"] += 1

            following = cpu_percent(app, args.seconds, during=write)
            screen = wait_for_screen(f"step {step}/", timeout=10)
        finally:
            tmux("kill-session", "-t", SESSION)
    print(screen)
    print(f"appended {written['events']} events ({written['events'] / args.seconds:.1f}/s) "
          f"and {2 * written['heartbeats']} heartbeats in {args.seconds:.0f} s")
    print(f"app CPU while idle: {idle:.2f}% of one core")
    print(f"app CPU while following: {following:.2f}% of one core (target < 5%)")
    print(f"ratio_vs_baseline: {following / max(idle, 0.01):.2f}")


if __name__ == "__main__":
    main()
