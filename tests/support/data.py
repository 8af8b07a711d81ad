"""Small datasets written on the fly for tests."""

from __future__ import annotations

import json
from pathlib import Path

# Real public dataset samples (sources and licences: tests/fixtures/samples/MANIFEST.md).
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def sft_rows(n: int = 24) -> list[dict]:
    return [{"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
    ]} for i in range(n)]


def preference_rows(n: int = 24) -> list[dict]:
    return [{
        "input": {"messages": [{"role": "user", "content": f"Please greet guest number {i}."}]},
        "preferred_output": [{"role": "assistant", "content": f"Hello, dear guest {i}! Welcome."}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    } for i in range(n)]


def prompt_rows(n: int = 16) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Tell me something about number {i}."}]} for i in range(n)]
