"""Streaming: the incremental JSON array reader (chunk boundaries, multibyte characters, buffer
compaction, locations) and peak memory while validating large generated files."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml.data import inspect_file, json_array
from ml.data.json_array import read_json_array

REPO = Path(__file__).parents[3]


def _values(data: bytes):
    return [
        (i.value, i.line, i.record, str(i.problem) if i.problem else None)
        for i in read_json_array(io.BytesIO(data))
    ]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_tiny_chunks_give_the_same_records_and_lines(monkeypatch, chunk):
    monkeypatch.setattr(json_array, "CHUNK_BYTES", chunk)
    rows = [
        {"instruction": "naïve café ☕ 日本語 " * (i % 4), "n": i, "nested": {"x": [1, 2.5, None, True]}}
        for i in range(40)
    ]
    text = json.dumps(rows, indent=2, ensure_ascii=False)
    got = _values(text.encode("utf-8"))
    assert [v for v, *_ in got] == rows
    assert [r for _, _, r, _ in got] == list(range(1, 41))
    starts = [n + 1 for n, line in enumerate(text.split("\n")) if line == "  {"]
    assert [line for _, line, _, _ in got] == starts


def test_compaction_keeps_line_and_column_right(monkeypatch):
    monkeypatch.setattr(json_array, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(json_array, "COMPACT_AT", 5000)
    body = ", ".join(json.dumps({"k": "v" * 50, "i": i}) for i in range(400))
    bad = "[" + body + ', {"k": oops}]'
    got = _values(bad.encode())
    assert len(got) == 401
    last = got[-1][3]
    col = bad.index("oops") + 1
    assert last == f"record 401 (line 1): invalid JSON (Expecting value, column {col})"
    multi = (
        "[\n" + ",\n".join(json.dumps({"i": i, "pad": "x" * 80}) for i in range(300)) + ',\n  {"i": tru}\n]'
    )
    err = _values(multi.encode())[-1][3]
    assert err == "record 301 (line 302): invalid JSON (Expecting value, column 9)"


def test_bad_utf8_inside_an_array_is_reported_and_reading_goes_on(monkeypatch):
    monkeypatch.setattr(json_array, "CHUNK_BYTES", 5)
    data = b'[\n{"a": "ok"},\n{"a": "b\xffd"},\n{"a": "fine"}\n]'
    got = _values(data)
    problems = [p for *_, p in got if p]
    assert problems == ["line 3: not valid UTF-8 text (byte 0xff at column 9); save the file as UTF-8"]
    assert [v["a"] for v, *_ in got if v] == ["ok", "b\ufffdd", "fine"]


def test_huge_single_record_grows_the_buffer(monkeypatch):
    monkeypatch.setattr(json_array, "CHUNK_BYTES", 4096)
    big = {"output": "y" * 300_000}
    got = _values(json.dumps([{"a": 1}, big, {"b": 2}]).encode())
    assert [v for v, *_ in got] == [{"a": 1}, big, {"b": 2}]


def _generate(path: Path, mb: int, array: bool) -> int:
    """Chat records with random words (no duplicates) until the file reaches `mb` MiB."""
    rnd = random.Random(0)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "wizards",
        "hex",
        "every",
        "jovial",
        "zebra",
    ]
    target, size, n = mb << 20, 0, 0
    with open(path, "w") as f:
        f.write("[\n" if array else "")
        while size < target:
            rec = {
                "messages": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": f"Q{n}: " + " ".join(rnd.choices(words, k=40))},
                    {"role": "assistant", "content": " ".join(rnd.choices(words, k=60))},
                ]
            }
            line = (",\n" if array and n else "") + json.dumps(rec) + ("" if array else "\n")
            f.write(line)
            size += len(line)
            n += 1
        f.write("\n]\n" if array else "")
    return n


_PROBE = """
import json, sys
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from ml.data import inspect_file
base = rss("VmRSS:")
r = inspect_file(sys.argv[1], out_path=sys.argv[2])
print(json.dumps({"ok": r.ok, "n": r.n_examples, "growth": rss("VmHWM:") - base}))
"""


def _peak_growth(path: Path, out: Path) -> dict:
    # a fresh interpreter, so the peak (VmHWM) belongs to this validation alone
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=900,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "json_array"])
def test_memory_stays_flat_on_a_30mb_file(tmp_path, array):
    path = tmp_path / ("big.json" if array else "big.jsonl")
    n = _generate(path, 30, array)
    res = _peak_growth(path, tmp_path / "out.jsonl")
    assert res["ok"] and res["n"] == n
    # json.load of this file alone would need ~150 MB of Python objects
    assert res["growth"] < 40 * 2**20, res


@pytest.mark.slow
def test_memory_on_a_200mb_jsonl(tmp_path):
    path = tmp_path / "huge.jsonl"
    n = _generate(path, 200, array=False)
    t = time.time()
    res = _peak_growth(path, tmp_path / "out.jsonl")
    assert res["ok"] and res["n"] == n
    assert res["growth"] < 100 * 2**20, res
    print(f"200 MB validated in {time.time() - t:.1f} s, peak growth {res['growth'] / 2**20:.1f} MiB")


def test_inspect_file_reads_gzip_array_streaming(tmp_path):
    import gzip

    path = tmp_path / "g.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump([{"prompt": f"p{i}"} for i in range(2000)], f)
    r = inspect_file(path)
    assert r.ok and r.compressed and r.container == "json" and r.n_examples == 2000
