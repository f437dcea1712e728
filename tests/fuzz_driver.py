"""Runs many command lines of the project in one process, each as its command-line entry point
would (`main(argv)`), and reports what each did: the exit status, what it printed on stderr, and
how long it took. tests/test_fuzz.py feeds it malformed inputs.

One process, because starting one costs seconds (torch, DeepSpeed) and a rejected input costs
milliseconds: `launch/train.py` starts and tears down its (one-rank) process group per case.

    python tests/fuzz_driver.py CASES.json RESULTS.json
    CASES.json: [{"command": "train" | "generate" | "export" | "tui", "argv": [...]}, ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import orjson  # noqa: E402


def entry_point(command: str):
    if command == "train":
        from launch.train import main
    elif command == "generate":
        from trainer.generate import main
    elif command == "export":
        from trainer.export import main
    else:
        from tui.__main__ import main
    return main


def run_case(command: str, argv: list[str]) -> dict:
    """main(argv) with stdout and stderr captured at the file-descriptor level (native code, such
    as DeepSpeed's op builder, writes there too)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        started = time.monotonic()
        try:
            code = entry_point(command)(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # what escaped: the test reports it
            import traceback

            traceback.print_exc()
            code = f"raised {type(e).__name__}"
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        seconds = time.monotonic() - started
        out.seek(0), err.seek(0)
        return {"code": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"), "seconds": seconds}


def main() -> None:
    cases = orjson.loads(Path(sys.argv[1]).read_bytes())
    results = [run_case(case["command"], case["argv"]) for case in cases]
    Path(sys.argv[2]).write_bytes(orjson.dumps(results))


if __name__ == "__main__":
    main()
