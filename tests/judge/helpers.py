"""Building inputs and configs for the judge's tests."""

from __future__ import annotations

from pathlib import Path

import orjson

from judge.clients import ServerConfig
from judge.prompt import CHAPTER_TEMPLATE, render
from judge.scorer import ScoreConfig
from tests.judge.fake_ollama import expected_score


def write_entries(path: Path, count: int, keys=("model_response",)) -> list[dict]:
    entries = [
        {"instruction": f"Task {i}", "input": f"input {i}" if i % 2 else "", "output": f"out {i}",
         **{key: f"{key} {i}" for key in keys}}
        for i in range(count)
    ]
    path.write_bytes(orjson.dumps(entries))
    return entries


def score_config(tmp_path: Path, url: str, **overrides) -> ScoreConfig:
    server = ServerConfig(url=url, api=overrides.pop("api", "ollama"), model=overrides.pop("model", "llama3"),
                          structured=overrides.pop("structured", False), timeout_s=overrides.pop("timeout_s", 5.0),
                          api_key=overrides.pop("api_key", None))
    settings = dict(input_path=tmp_path / "in.json", out_path=tmp_path / "out.json",
                    summary_path=tmp_path / "out.summary.json", server=server,
                    retry_base_s=0.01, retry_cap_s=0.2, progress=False)
    settings.update(overrides)
    return ScoreConfig(**settings)


def expected(entry: dict, key: str = "model_response") -> int:
    return 0 if entry[key] == "" else expected_score(render(CHAPTER_TEMPLATE, entry, entry[key]))
