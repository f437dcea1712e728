"""`python -m tui RUN_DIR` follows a run (or replays a finished one); `python -m tui runs/`
lists the runs there, to open or compare; `--once` prints a plain-text summary (or the runs
table) instead and exits."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tui.app import DashboardApp, is_runs_root
from tui.dashboard import DashboardConfig
from tui.once import read_run, run_summary, runs_listing
from tui.runs import list_runs
from tui.state import Thresholds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Thresholds()
    parser = argparse.ArgumentParser(prog="python -m tui", description=__doc__)
    parser.add_argument("path", type=Path, help="a run directory, or a directory of runs (runs/)")
    parser.add_argument("--once", action="store_true", help="print a plain-text summary and exit")
    parser.add_argument("--interval", type=float, default=DashboardConfig.interval_s,
                        help="seconds between polls of the files and redraws (default %(default)s)")
    parser.add_argument("--stall-after", type=float, default=defaults.stall_after_s,
                        help="seconds without news before the run is stalled and a rank silent "
                             "or stuck (default %(default)s)")
    parser.add_argument("--behind-steps", type=int, default=defaults.behind_steps,
                        help="a rank this many steps behind the others is a straggler "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.stall_after <= 0 or args.behind_steps < 0:
        parser.exit(2, "python -m tui: error: --interval and --stall-after must be positive, --behind-steps not negative\n")
    if args.path.exists() and not args.path.is_dir():
        parser.exit(2, f"python -m tui: error: {args.path}: not a directory\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    thresholds = Thresholds(stall_after_s=args.stall_after, behind_steps=args.behind_steps)
    if args.once:
        now = time.time()
        if not args.path.is_dir():
            print(f"python -m tui: {args.path}: no such run directory", file=sys.stderr)
            return 2
        if is_runs_root(args.path):
            print(runs_listing(list_runs(args.path, now, thresholds)), end="")
        else:
            print(run_summary(read_run(args.path, thresholds, now), args.path.name, now), end="")
        return 0
    DashboardApp(args.path, DashboardConfig(interval_s=args.interval, thresholds=thresholds)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
