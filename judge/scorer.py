"""Scoring a responses file: plan the requests, send them concurrently, write the results.

1. Read and check the entries; build one prompt per (entry, key). Empty responses score 0
   without a request (as the chapter); identical prompts are requested once.
2. Drop the prompts the journal already holds (a re-run resumes).
3. Check the server and model, then send the rest with at most `limiter.limit` requests in
   flight. Transport failures, timeouts, 429/5xx and broken streams are retried with
   exponential backoff and jitter; 400/404 fail at once. An entry that still fails is recorded
   as failed and the run goes on; it is not journaled, so the next run retries it.
4. Write the scored entries and the summary atomically (docs/judge.md).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from instruct import atomic_write_json, read_entries
from judge.clients import Client, RequestError, ServerConfig, ServerInfo, make_client
from judge.concurrency import AUTO_MAX_IN_FLIGHT, Limiter
from judge.journal import Journal, request_key
from judge.parse import parse_score
from judge.progress import make_progress
from judge.prompt import CHAPTER_TEMPLATE, render
from judge.stats import describe, paired_difference

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class ScoreConfig:
    input_path: Path
    out_path: Path
    summary_path: Path
    server: ServerConfig
    keys: tuple[str, ...] = ("model_response",)
    template: str = CHAPTER_TEMPLATE
    template_name: str = "chapter"  # "chapter" or the --prompt-file path, for the summary
    concurrency: int | None = None  # None: auto
    retries: int = 8  # per request, after the first attempt
    retry_base_s: float = 0.5  # first backoff; doubles per retry, up to retry_cap_s
    retry_cap_s: float = 30.0
    progress: bool = True

    @property
    def journal_path(self) -> Path:
        return with_suffix(self.out_path, ".journal.jsonl")


def with_suffix(out_path: Path, suffix: str) -> Path:
    """`runs/x.scored.json` -> `runs/x.scored<suffix>`: the files that go with an output."""
    name = out_path.name[: -len(".json")] if out_path.name.endswith(".json") else out_path.name
    return out_path.with_name(name + suffix)


@dataclass(frozen=True)
class Result:
    score: int | None  # None: unparseable (reply set) or failed (error set)
    reply: str | None = None
    error: str | None = None


class Scorer:
    """Sends the prompts of one run through one HTTP session and one limiter."""

    def __init__(self, config: ScoreConfig, client: Client, session: aiohttp.ClientSession):
        self.config = config
        self.client = client
        self.session = session
        self.limiter = Limiter(config.concurrency)
        self.requests = 0
        self.retries = 0
        self._jitter = random.Random()

    async def score_all(self, prompts: dict[str, str], journal: Journal, results: dict[str, Result]) -> None:
        todo = [key for key in prompts if key not in results]
        progress = make_progress(len(prompts), len(prompts) - len(todo), self.config.progress)
        pending = iter(todo)  # shared by the workers: each prompt goes to exactly one

        async def worker() -> None:
            for key in pending:
                result = await self.score_one(prompts[key])
                results[key] = result
                if result.error is None:
                    journal.append(key, result.score, result.reply)
                progress.update(len(results), self.limiter.in_flight, self.limiter.limit)

        workers = self.config.concurrency or AUTO_MAX_IN_FLIGHT
        try:
            await asyncio.gather(*(worker() for _ in range(min(workers, len(todo)))))
        finally:
            progress.close()

    async def score_one(self, prompt: str) -> Result:
        failures = 0
        first_reply = None  # an unparseable first reply: asked once more
        while True:
            ticket = await self.limiter.acquire()
            self.requests += 1
            try:
                reply = await self.client.chat(self.session, prompt)
            except RequestError as e:
                self.limiter.release(ticket, overload=e.overload)
                if not e.retryable or failures >= self.config.retries:
                    return Result(None, error=str(e))
                failures += 1
                self.retries += 1
                await asyncio.sleep(self._backoff_s(failures))
                continue
            except BaseException:
                self.limiter.release(ticket)
                raise
            self.limiter.release(ticket, reply.latency_s, reply.queue_wait_s)
            score = parse_score(reply.content, self.config.server.structured)
            if score is not None or first_reply is not None:
                return Result(score, reply.content)
            first_reply = reply.content
            self.retries += 1

    def _backoff_s(self, failures: int) -> float:
        """Exponential backoff with "equal jitter" (half fixed, half random), so clients that
        failed together (a server restart) do not come back together."""
        ceiling = min(self.config.retry_cap_s, self.config.retry_base_s * 2 ** (failures - 1))
        return ceiling * self._jitter.uniform(0.5, 1.0)


def plan(entries: list[dict], config: ScoreConfig) -> tuple[list[dict[str, str | None]], dict[str, str]]:
    """Per entry, the request key of each response (None: empty, scores 0); prompts by key."""
    assignments, prompts = [], {}
    for entry in entries:
        row = {}
        for key in config.keys:
            if entry[key] == "":
                row[key] = None
                continue
            prompt = render(config.template, entry, entry[key])
            row[key] = rk = request_key(prompt, config.server)
            prompts[rk] = prompt
        assignments.append(row)
    return assignments, prompts


async def score_file(config: ScoreConfig) -> dict:
    """Score `config.input_path`; write the scored file and summary; return the summary."""
    started, started_at = time.monotonic(), time.time()
    entries = read_entries(config.input_path, required=("instruction", "output", *config.keys))
    assignments, prompts = plan(entries, config)
    journal = Journal(config.journal_path)
    results = {key: Result(**record) for key, record in journal.load().items() if key in prompts}
    from_journal = len(results)
    client = make_client(config.server)
    connector = aiohttp.TCPConnector(limit=config.concurrency or AUTO_MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        info = await client.check(session)
        scorer = Scorer(config, client, session)
        try:
            await scorer.score_all(prompts, journal, results)
        finally:
            journal.close()
    wall_s = time.monotonic() - started

    scored_entries, per_key = apply_results(entries, assignments, results, config.keys)
    summary = {
        "v": SUMMARY_VERSION,
        "type": "judge_summary",
        "time": started_at,
        "input": str(config.input_path),
        "output": str(config.out_path),
        "journal": str(config.journal_path),
        "judge": judge_info(config, info),
        "prompt_template": config.template_name,
        "concurrency": "auto" if config.concurrency is None else config.concurrency,
        "wall_s": round(wall_s, 3),
        "requests": scorer.requests,
        "requests_per_s": round(scorer.requests / wall_s, 3) if wall_s > 0 else 0.0,
        "retries": scorer.retries,
        "from_journal": from_journal,
        "keys": per_key,
        "paired": [
            {"a": a, "b": b, **paired_difference(per_key_scores(scored_entries, a), per_key_scores(scored_entries, b))}
            for a, b in itertools.combinations(config.keys, 2)
        ],
    }
    atomic_write_json(config.out_path, scored_entries)
    atomic_write_json(config.summary_path, summary)
    return summary


def judge_info(config: ScoreConfig, info: ServerInfo) -> dict:
    server = config.server
    return {
        "model": info.model,
        "digest": info.digest,
        "api": server.api,
        "url": server.base_url,
        "server_version": info.version,
        "structured": server.structured,
        "options": server.options,
    }


def per_key_scores(scored_entries: list[dict], key: str) -> list[int | None]:
    return [entry[f"{key}_score"] for entry in scored_entries]


def apply_results(
    entries: list[dict],
    assignments: list[dict[str, str | None]],
    results: dict[str, Result],
    keys: tuple[str, ...],
) -> tuple[list[dict], dict]:
    """The input entries with `<key>_score` (and the reply or error where there is no score),
    and each key's counts and figures for the summary."""
    scored_entries = []
    failed = {key: [] for key in keys}
    unparseable = {key: [] for key in keys}
    for index, (entry, row) in enumerate(zip(entries, assignments)):
        out = dict(entry)
        for key in keys:
            result = Result(0) if row[key] is None else results[row[key]]
            out[f"{key}_score"] = result.score
            if result.error is not None:
                out[f"{key}_judge_error"] = result.error
                failed[key].append(index)
            elif result.score is None:
                out[f"{key}_judge_reply"] = result.reply
                unparseable[key].append(index)
        scored_entries.append(out)
    per_key = {}
    for key in keys:
        scores = [s for s in per_key_scores(scored_entries, key) if s is not None]
        per_key[key] = {
            "total": len(entries),
            "scored": len(scores),
            "failed": len(failed[key]),
            "unparseable": len(unparseable[key]),
            **describe(scores),
            "failed_indices": failed[key],
            "unparseable_indices": unparseable[key],
        }
    return scored_entries, per_key
