"""`python -m judge score FILE ...`, `follow RUN_DIR`, `check`: the command line of the judge.

Exit status: 0 when every entry has a score or an unparseable reply, 3 when some entries
failed (re-run the same command to retry them; `follow`: some judged evaluations are not
scored when the run has ended), 1 on bad input or an unusable server, 2 on bad arguments, 130 on
Ctrl-C (finished scores are kept in the journal).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from instruct import EntryError
from judge.clients import CheckError, ServerConfig, ServerInfo, make_client
from judge.dispatch import RetryPolicy
from judge.follow import RunWatch, follow
from judge.prompt import CHAPTER_TEMPLATE, TemplateError, load_template
from judge.scorer import ScoreConfig, score_file, with_suffix

DEFAULT_URL = "http://localhost:11434"

EXIT_FAILED_ENTRIES = 3
LISTED_MAX = 20  # failed/unparseable entries listed on the terminal (all are in the summary)


class UsageError(Exception):
    """Arguments that parse but cannot be used (a missing API key variable, a repeated key)."""


def concurrency_arg(value: str) -> int | None:
    if value == "auto":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}")


def positive_int(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")


def count(value: str) -> int:
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {value!r}")


def positive_seconds(value: str) -> float:
    """A finite number of seconds above 0 (aiohttp reads a timeout of 0 as no timeout at all)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if 0 < seconds < float("inf"):
        return seconds
    raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m judge", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score the responses in a file with an LLM judge")
    score.add_argument("file", type=Path, help="JSON list or JSONL of entries (instruction, input, output, responses)")
    score.add_argument("--key", action="append", dest="keys", metavar="KEY",
                       help="field holding the response to score; repeat to compare models (default: model_response)")
    score.add_argument("--out", type=Path, help="scored file (default: FILE's name with .scored.json)")
    score.add_argument("--summary", type=Path, help="summary JSON (default: OUT with .summary.json)")
    add_judge_options(score)

    follow_run = commands.add_parser(
        "follow", help="score a training run's judged evaluations (evals/step-<N>.json) as they appear")
    follow_run.add_argument("run_dir", type=Path, help="the run directory")
    follow_run.add_argument("--interval", type=positive_seconds, default=2.0, metavar="S",
                            help="seconds between looks at the run directory (default: 2)")
    follow_run.add_argument("--stall-after", type=positive_seconds, default=120.0, metavar="S",
                            help="a run whose metrics.jsonl has not grown for this long has ended (default: 120)")
    add_judge_options(follow_run)

    check = commands.add_parser("check", help="check that a server answers and serves the judge model, then exit")
    check.add_argument("--model", default="llama3", help="judge model (default: llama3)")
    check.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default: {DEFAULT_URL})")
    check.add_argument("--api", choices=("ollama", "openai"), default="ollama")
    check.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key")
    return parser


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    """The judge and how to reach it: what `score` and `follow` share."""
    parser.add_argument("--model", default="llama3", help="judge model (default: llama3)")
    parser.add_argument("--url", action="append", dest="urls", metavar="URL",
                        help=f"server URL; repeat to share the work between servers of the same model "
                             f"(default: {DEFAULT_URL})")
    parser.add_argument("--api", choices=("ollama", "openai"), default="ollama",
                        help="ollama: /api/chat; openai: /v1/chat/completions (vLLM, llama.cpp, Ollama's /v1)")
    parser.add_argument("--api-key-env", metavar="NAME",
                        help="environment variable holding the API key (sent as a Bearer token, never printed)")
    parser.add_argument("--concurrency", type=concurrency_arg, action="append", metavar="N|auto",
                        help="requests in flight per server: a number, or auto (default) to find each server's "
                             "capacity; once for every server, or once per --url in the same order")
    parser.add_argument("--prompt-file", type=Path,
                        help="custom prompt template with {input}, {output} and {response} placeholders")
    parser.add_argument("--structured", action="store_true",
                        help='ask for the JSON schema {"score": integer 0..100} (Ollama format / response_format)')
    parser.add_argument("--max-tokens", type=positive_int, metavar="N",
                        help="cap on the reply's tokens (Ollama num_predict); default: the server's")
    parser.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S",
                        help="seconds per request, including the server's queue (default: 300)")
    parser.add_argument("--retries", type=count, default=8, metavar="N",
                        help="retries per request on transient failures (default: 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def check_server(args: argparse.Namespace) -> int:
    """`python -m judge check`: what `score` checks before it sends anything (the trainer's
    --judge-url runs it before its first step)."""
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    server = ServerConfig(url=args.url, api=args.api, model=args.model, api_key=api_key)

    async def check() -> ServerInfo:
        async with aiohttp.ClientSession() as session:
            return await make_client(server).check(session)

    try:
        info = asyncio.run(check())
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {info.model} (digest {info.short_digest}) at {server.shown_url}")
    return 0


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    keys = tuple(args.keys or ["model_response"])
    if len(set(keys)) != len(keys):
        raise UsageError(f"--key given twice: {', '.join(keys)}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    urls = args.urls or [DEFAULT_URL]
    if len(set(urls)) != len(urls):
        raise UsageError("--url given twice for the same server")
    concurrency = tuple(args.concurrency or [None])
    if len(concurrency) not in (1, len(urls)):
        raise UsageError(f"--concurrency given {len(concurrency)} times for {len(urls)} --url: give it once, "
                         "or once per --url")
    out = args.out or args.file.with_name(args.file.stem + ".scored.json")
    return ScoreConfig(
        input_path=args.file,
        out_path=out,
        summary_path=args.summary or with_suffix(out, ".summary.json"),
        servers=tuple(
            ServerConfig(
                url=url,
                api=args.api,
                model=args.model,
                structured=args.structured,
                max_tokens=args.max_tokens,
                timeout_s=args.timeout,
                api_key=api_key,
            )
            for url in urls
        ),
        keys=keys,
        template=load_template(args.prompt_file) if args.prompt_file else CHAPTER_TEMPLATE,
        template_name=str(args.prompt_file) if args.prompt_file else "chapter",
        concurrency=concurrency,
        retry=RetryPolicy(retries=args.retries),
        progress=not args.quiet,
    )


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def print_summary(summary: dict) -> None:
    console = Console(highlight=False, markup=False, soft_wrap=True)
    judge = summary["judge"]
    digest = f"digest {judge['digest']}" if judge["digest"] else "digest unknown"
    console.print(
        f"judge {judge['model']} ({digest}, server {judge['server_version']}, {judge['api']}); "
        f"{summary['requests']} requests in {summary['wall_s']:.1f} s ({summary['requests_per_s']:.1f} req/s), "
        f"{summary['retries']} retries, {summary['from_journal']} from the journal"
    )
    if not judge["digest"] and summary["from_journal"]:
        console.print(f"the server reports no model digest: the journal key holds the model id, so the "
                      f"{summary['from_journal']} scores from the journal may come from another version of it")
    for server in summary["servers"]:
        down = f", set aside {server['times_down']}x (its entries went to the others)" if server["times_down"] else ""
        console.print(f"server {server['url']}: {server['requests']} requests, {server['failures']} failed, "
                      f"{server['requests_per_s']:.1f} req/s, concurrency {server['concurrency']}{down}")
    table = Table("key", "scored", "failed", "unparseable", "truncated", "mean", "median", "std", "95% CI")
    for key, k in summary["keys"].items():
        table.add_row(key, f"{k['scored']}/{k['total']}", str(k["failed"]), str(k["unparseable"]), str(k["truncated"]),
                      _number(k["mean"]), _number(k["median"]), _number(k["std"]), _interval(k["ci95"]))
    console.print(table)
    for key, k in summary["keys"].items():
        console.print(f"{key} histogram {k['histogram']['counts']} (bins of 10, last includes 100)")
        for what in ("failed", "unparseable", "truncated"):
            indices = k[f"{what}_indices"]
            if indices:
                more = f" and {len(indices) - LISTED_MAX} more" if len(indices) > LISTED_MAX else ""
                console.print(f"{key} {what} entries: {indices[:LISTED_MAX]}{more}")
        if k["truncated"] == "unknown":
            console.print(f"{key} truncation unknown: the server reports no prompt token count")
        elif k["truncation_unknown"]:
            console.print(f"{key}: {k['truncation_unknown']} replies gave no prompt token count "
                          "(their truncation is unknown)")
    for pair in summary["paired"]:
        console.print(f"{pair['a']} - {pair['b']}: mean difference {_number(pair['mean_diff'])}, "
                      f"95% CI {_interval(pair['ci95'])}, over {pair['n']} entries")


def follow_run(args: argparse.Namespace) -> int:
    """`python -m judge follow RUN_DIR`: score each judged evaluation as the run writes it."""
    if not args.run_dir.is_dir():
        print(f"error: {args.run_dir}: no such run directory", file=sys.stderr)
        return 1

    def config_for(path: Path) -> ScoreConfig:
        return config_from_args(argparse.Namespace(**{**vars(args), "file": path, "out": None, "summary": None,
                                                      "keys": None}))

    def score(path: Path) -> None:
        try:
            summary = asyncio.run(score_file(config_for(path)))
        except (EntryError, CheckError) as e:
            print(f"error: {e}", file=sys.stderr)  # tried again at the next look
            return
        scores = summary["keys"]["model_response"]
        print(f"{path.name}: mean {_number(scores['mean'])}, 95% CI {_interval(scores['ci95'])}, "
              f"{scores['scored']}/{scores['total']} scored")

    try:
        config_for(args.run_dir / "evals" / "step-0.json")  # the flags, checked before any wait
        unscored = follow(args.run_dir, score, RunWatch(args.run_dir / "metrics.jsonl", args.stall_after),
                          args.interval)
    except (TemplateError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished scores are kept in the journals; re-run the same command to resume",
              file=sys.stderr)
        return 130
    if unscored:
        print(f"error: the run has ended; not scored: {', '.join(path.name for path in unscored)} "
              "(re-run the same command to retry)", file=sys.stderr)
        return EXIT_FAILED_ENTRIES
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check_server(args)
    if args.command == "follow":
        return follow_run(args)
    try:
        config = config_from_args(args)
    except (TemplateError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        summary = asyncio.run(score_file(config))
    except (EntryError, CheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished scores are kept in {config.journal_path}; "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    print_summary(summary)
    print(f"wrote {config.out_path} and {config.summary_path}")
    failed = sum(k["failed"] for k in summary["keys"].values())
    return EXIT_FAILED_ENTRIES if failed else 0
