"""Judging as a run's last phase (`--judge-url`): did fine-tuning help, and by how much?

Before the first step, rank 0 checks that the judge can run (`python -m judge check`: the judge
installed, the server answering, the model there), so that nobody learns it after hours of
training. After `run_end`, once the test responses are written and the other ranks have finished,
rank 0 runs `python -m judge score` on them as a separate process (the trainer imports nothing of
the judge; they meet through the files of docs/judge.md), with `--key model_response` and, with
--base-responses, `--key base_response`: the summary's paired difference is then tuned minus
base, with its 95% CI. `judge_start` and `judge_end` follow `run_end` in metrics.jsonl. A judge
that is down never fails the run: `judge_end` says `failed`, why, and the command that finishes
the job later (its journal means nothing is scored twice).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import orjson

from instruct import redact_url
from trainer.lifecycle.final import BASE_KEY, KEY, RESPONSES_FILE
from trainer.reporting.events import JudgeEnd, JudgeStart
from trainer.reporting.metrics import MetricsWriter
from trainer.training.config import TrainConfig

CHECK_TIMEOUT_S = 60


def judge_arguments(config: TrainConfig) -> list[str]:
    arguments = ["--url", config.judge_server, "--model", config.judge_model, "--api", config.judge_api]
    return arguments + (["--api-key-env", config.judge_key_env] if config.judge_key_env else [])


def check_judge(config: TrainConfig) -> None:
    """Raise ValueError (one line) unless the judge can score with this server and model."""
    command = [sys.executable, "-m", "judge", "check", *judge_arguments(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ValueError(f"--judge-url: the judge's check did not answer within {CHECK_TIMEOUT_S} s") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
        if "No module named judge" in done.stderr or "aiohttp" in done.stderr:
            reason = "the judge is not installed here: pip install -e '.[judge]'"
        raise ValueError(f"{judge_flag(config)}: {reason}")


def judge_flag(config: TrainConfig) -> str:
    """The flag that named the judge, as an error may show it."""
    if config.judge_url_env:
        return f"--judge-url-env {config.judge_url_env}"
    return f"--judge-url {config.judge_url}"  # one without credentials (TrainConfig's checks)


def by_hand(arguments: list[str], config: TrainConfig) -> str:
    """The `python -m judge score` command that finishes the job later, without credentials: the
    URL as --judge-url gave it, or the environment variable --judge-url-env named."""
    words = ["python", "-m", "judge", "score", *arguments]
    at = words.index("--url") + 1
    if config.judge_url_env:
        return f'{shlex.join(words[:at])} "${config.judge_url_env}" {shlex.join(words[at + 1:])}'
    return shlex.join(words)


class JudgeFollow:
    """`python -m judge follow RUN_DIR` for the judged evaluations (--judge-samples): started by
    rank 0 at the first one, waited for once the run has ended (it scores what is left and exits
    when it sees run_end). Its output goes to evals/follow.log, not into the run's console."""

    def __init__(self, config: TrainConfig):
        self.arguments = [*judge_arguments(config), "--quiet"]
        self.log: Path | None = None
        self.process: subprocess.Popen | None = None

    def start(self, run_dir: Path) -> None:
        if self.process is None:
            self.log = run_dir / "evals" / "follow.log"
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen([sys.executable, "-m", "judge", "follow", str(run_dir), *self.arguments],
                                                stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            print(f"waiting for python -m judge follow to score the last judged evaluations (log: {self.log})")
        if self.process.wait() != 0:
            print(f"warning: python -m judge follow exited with {self.process.returncode} (log: {self.log}); "
                  "run it again to finish", file=sys.stderr)


def judge(run_dir: Path, config: TrainConfig, notifier=None) -> JudgeEnd:
    """Rank 0, after run_end: score the test responses; judge_start and judge_end in metrics.jsonl
    (and judge_end to the --notify-env webhook)."""
    responses = run_dir / RESPONSES_FILE
    keys = [KEY, BASE_KEY] if config.base_responses else [KEY]
    arguments = [str(responses), *judge_arguments(config)]
    arguments += [x for key in keys for x in ("--key", key)]
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    try:
        writer.write(JudgeStart(url=redact_url(config.judge_server), model=config.judge_model, api=config.judge_api,
                                keys=keys))
        code, reason = score(arguments)
        end = judge_end(run_dir, code, reason, by_hand(arguments, config))
        writer.write(end)
        if notifier is not None:
            notifier.notify(run_dir.name, end)
    finally:
        writer.close()
    report(end)
    return end


def score(arguments: list[str]) -> tuple[int, str | None]:
    """Run `python -m judge score`, its progress and summary on this console; (exit status, the
    last line it said on stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "judge", "score", *arguments], stderr=subprocess.PIPE,
                               text=True)
    last = None
    for line in process.stderr:
        sys.stderr.write(line)
        if line.strip():
            last = line.strip()
    return process.wait(), last


def judge_end(run_dir: Path, code: int, reason: str | None, command: str) -> JudgeEnd:
    summary_path = run_dir / (Path(RESPONSES_FILE).stem + ".scored.summary.json")
    summary = None
    if code == 0:
        try:
            summary = orjson.loads(summary_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            code, reason = 1, f"no readable summary at {summary_path.name} ({type(e).__name__})"
    if summary is None:
        why = "some entries could not be scored (re-run to retry them)" if code == 3 else (reason or f"exit {code}")
        return JudgeEnd(status="failed", error=f"judge exited with {code}: {why}".removesuffix("."),
                        summary=summary_path.name if summary_path.exists() else None, mean=None, ci95=None,
                        base_mean=None, tuned_minus_base=None, command=command)
    tuned, base = summary["keys"][KEY], summary["keys"].get(BASE_KEY)
    pair = next((p for p in summary["paired"] if (p["a"], p["b"]) == (KEY, BASE_KEY)), None)
    return JudgeEnd(
        status="completed", error=None, summary=summary_path.name, mean=tuned["mean"], ci95=tuned["ci95"],
        base_mean=base["mean"] if base else None,
        tuned_minus_base={"n": pair["n"], "mean_diff": pair["mean_diff"], "ci95": pair["ci95"]} if pair else None,
        command=None,
    )


def report(end: JudgeEnd) -> None:
    """The chapter's "Average score: ..." line, and the base model's and the difference."""
    if end.status != "completed":
        print(f"judging failed: {end.error}\nfinish it later with: {end.command}", file=sys.stderr)
        return
    print(f"Average score: {end.mean:.2f}" if end.mean is not None else "Average score: none (nothing scored)")
    if end.base_mean is not None:
        print(f"Base model's average score: {end.base_mean:.2f}")
    pair = end.tuned_minus_base
    if pair and pair["mean_diff"] is not None:
        interval = f" (95% CI {pair['ci95'][0]:+.2f} to {pair['ci95'][1]:+.2f})" if pair["ci95"] else ""
        print(f"Tuned minus base: {pair['mean_diff']:+.2f}{interval} over {pair['n']} entries")
