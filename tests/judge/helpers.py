"""Building inputs and configs for the judge's tests."""

from __future__ import annotations

from pathlib import Path

import orjson

from judge.clients import ServerConfig
from judge.dispatch import RetryPolicy
from judge.prompt import CHAPTER_TEMPLATE, render
from judge.scorer import ScoreConfig
from testkit.fake_ollama import expected_score


def write_entries(path: Path, count: int, keys=("model_response",)) -> list[dict]:
    entries = [
        {"instruction": f"Task {i}", "input": f"input {i}" if i % 2 else "", "output": f"out {i}",
         **{key: f"{key} {i}" for key in keys}}
        for i in range(count)
    ]
    path.write_bytes(orjson.dumps(entries))
    return entries


def score_config(tmp_path: Path, url: str | list[str], **overrides) -> ScoreConfig:
    """A run's config for tests: short timeouts and backoffs; `url` may list several servers."""
    servers = tuple(
        ServerConfig(url=u, api=overrides.get("api", "ollama"), model=overrides.get("model", "llama3"),
                     structured=overrides.get("structured", False), timeout_s=overrides.get("timeout_s", 5.0),
                     api_key=overrides.get("api_key"))
        for u in ([url] if isinstance(url, str) else url)
    )
    for name in ("api", "model", "structured", "timeout_s", "api_key"):
        overrides.pop(name, None)
    retry = RetryPolicy(retries=overrides.pop("retries", 8), base_s=overrides.pop("retry_base_s", 0.01),
                        cap_s=overrides.pop("retry_cap_s", 0.2))
    settings = dict(input_path=tmp_path / "in.json", out_path=tmp_path / "out.json",
                    summary_path=tmp_path / "out.summary.json", servers=servers, retry=retry, progress=False)
    settings.update(overrides)
    return ScoreConfig(**settings)


def expected(entry: dict, key: str = "model_response") -> int:
    return 0 if entry[key] == "" else expected_score(render(CHAPTER_TEMPLATE, entry, entry[key]))
