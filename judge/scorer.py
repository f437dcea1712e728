"""One scoring run, in phases: check the servers, plan the requests, send them, write the outputs.

Memory stays flat however long the input: entries are read as a stream (judge/inputs.py), the
prompts to send and their results live in a working index on disk (judge/store.py), each
result is appended to the journal as it arrives, and the scored file is written entry by entry
(judge/output.py). Identical prompts are requested once; prompts the journal answers are not
requested at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import aiohttp

from instruct import atomic_write_json
from judge.clients import ServerConfig, ServerInfo
from judge.dispatch import Dispatcher, RetryPolicy
from judge.inputs import Entries
from judge.journal import Journal, RequestKey, Result
from judge.output import write_scored
from judge.progress import make_progress
from judge.prompt import CHAPTER_TEMPLATE, render
from judge.servers import PROBE_INTERVAL_S, Servers
from judge.store import Store

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class ScoreConfig:
    input_path: Path
    out_path: Path
    summary_path: Path
    servers: tuple[ServerConfig, ...]  # the same judge at one URL or several
    keys: tuple[str, ...] = ("model_response",)
    template: str = CHAPTER_TEMPLATE
    template_name: str = "chapter"  # "chapter" or the --prompt-file path, for the summary
    concurrency: tuple[int | None, ...] = (None,)  # None: auto; one for every server, or one each
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    probe_interval_s: float = PROBE_INTERVAL_S
    progress: bool = True

    @property
    def server(self) -> ServerConfig:
        """What every server shares: the API, model, options and timeout."""
        return self.servers[0]

    @property
    def journal_path(self) -> Path:
        return with_suffix(self.out_path, ".journal.jsonl")

    @property
    def work_path(self) -> Path:
        return with_suffix(self.out_path, ".work.sqlite")


def with_suffix(out_path: Path, suffix: str) -> Path:
    """`runs/x.scored.json` -> `runs/x.scored<suffix>`: the files that go with an output."""
    name = out_path.name[: -len(".json")] if out_path.name.endswith(".json") else out_path.name
    return out_path.with_name(name + suffix)


@dataclass
class Plan:
    prompts: int  # distinct prompts of the input
    from_journal: int  # of them, answered by the journal


def plan_requests(entries: Entries, config: ScoreConfig, request_key: RequestKey, store: Store) -> Plan:
    """Check every entry; list each distinct prompt the journal does not answer, to request."""

    def planned() -> Iterator[tuple[str, str]]:
        for entry in entries:
            for key in config.keys:
                if entry[key] != "":  # an empty response scores 0 without a request, as the chapter
                    prompt = render(config.template, entry, entry[key])
                    yield request_key(prompt), prompt

    store.add_planned(planned())
    return Plan(*store.make_todo())


async def send_requests(config: ScoreConfig, servers: Servers, session: aiohttp.ClientSession, store: Store,
                        plan: Plan) -> Dispatcher:
    """Request every prompt on the todo list; each final result goes to the journal and the index."""
    journal = Journal(config.journal_path)
    progress = make_progress(plan.prompts, plan.from_journal, config.progress)
    done = plan.from_journal

    def finish(key: str, result: Result) -> None:
        nonlocal done
        if result.error is None:
            journal.append(key, result)
        store.finish(key, result)
        done += 1
        if progress is not None:
            progress.update(done, servers.in_flight(), servers.limit())

    dispatcher = Dispatcher(servers, session, config.server.structured, config.retry, finish)
    try:
        await dispatcher.run(store.todo())
    finally:
        if progress is not None:
            progress.close()
        journal.close()
    return dispatcher


async def score_file(config: ScoreConfig) -> dict:
    """Score `config.input_path`; write the scored file and summary; return the summary."""
    started, started_at = time.monotonic(), time.time()
    entries = Entries(config.input_path, required=("instruction", "output", *config.keys))
    servers = Servers(config.servers, config.concurrency, config.probe_interval_s)
    connector = aiohttp.TCPConnector(limit=sum(int(server.limiter.cap) for server in servers.all))
    async with aiohttp.ClientSession(connector=connector) as session:
        info = await servers.check(session)
        request_key = RequestKey(config.server, info)
        with Store(config.work_path) as store:
            store.add_journal(Journal(config.journal_path).records())
            plan = plan_requests(entries, config, request_key, store)
            sending = time.monotonic()
            dispatcher = await send_requests(config, servers, session, store, plan)
            send_s = time.monotonic() - sending
            per_key, paired = write_scored(config.out_path, entries, config.keys, store.results(), config.input_path)
    wall_s = time.monotonic() - started
    summary = {
        "v": SUMMARY_VERSION,
        "type": "judge_summary",
        "time": started_at,
        "input": str(config.input_path),
        "output": str(config.out_path),
        "journal": str(config.journal_path),
        "judge": judge_info(config, info),
        "prompt_template": config.template_name,
        "concurrency": concurrency_field(config.concurrency),
        "wall_s": round(wall_s, 3),
        "send_s": round(send_s, 3),
        "requests": dispatcher.requests,
        "requests_per_s": round(dispatcher.requests / wall_s, 3) if wall_s > 0 else 0.0,
        "retries": dispatcher.retries,
        "from_journal": plan.from_journal,
        "servers": [server.summary(wall_s) for server in servers.all],
        "keys": per_key,
        "paired": paired,
    }
    atomic_write_json(config.summary_path, summary)
    return summary


def concurrency_field(concurrency: tuple[int | None, ...]) -> str | int | list:
    """"auto" or N for every server; a list, one per server, when given per server."""
    values = ["auto" if n is None else n for n in concurrency]
    return values[0] if len(values) == 1 else values


def judge_info(config: ScoreConfig, info: ServerInfo) -> dict:
    server = config.server
    return {
        "model": info.model,
        "digest": info.short_digest,
        "api": server.api,
        "url": server.shown_url,
        "server_version": info.version,
        "structured": server.structured,
        "options": server.options,
        "journal_key": "model digest" if info.digest else "model id",
    }
