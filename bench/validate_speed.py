"""Validation throughput of ml.data.inspect_file, in MB/s, against plain baselines measured in the same run.

Without a tokenizer the baseline is the floor any validator pays: json.loads of every line. With the
SmolLM2 tokenizer (the tiny test model shares it) the baseline is the plain Hugging Face way of counting
tokens: json.loads + apply_chat_template(tokenize=True) per example. --mem-gb also validates a JSONL
file of that size in a child process and prints its peak memory growth. Prints markdown table lines.

    OMP_NUM_THREADS=1 .venv/bin/python bench/validate_speed.py [--mb 50] [--tok-mb 20] [--mem-gb 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.data import inspect_file


def generate_alpaca(path: Path, mb: float) -> int:
    """An Alpaca JSON array (the tatsu-lab layout: one indented object per element)."""
    rnd = random.Random(1)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "zebra"]
    rows, size, n = [], 0, 0
    while size < mb * 2**20:
        row = {"instruction": f"Task {n}: " + " ".join(rnd.choices(words, k=20)),
               "input": " ".join(rnd.choices(words, k=rnd.choice((0, 15)))),
               "output": " ".join(rnd.choices(words, k=60))}
        rows.append(row)
        size += len(json.dumps(row)) + 20
        n += 1
    path.write_text(json.dumps(rows, indent=4))
    return n


def generate(path: Path, mb: float, array: bool = False) -> int:
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
    target, size, n = int(mb * 2**20), 0, 0
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


CPU: list[float] = []  # CPU seconds of each timed() call: what a loaded, shared machine cannot inflate


def timed(fn) -> float:
    t, c = time.perf_counter(), time.process_time()
    fn()
    CPU.append(time.process_time() - c)
    return time.perf_counter() - t


def plain_parse(path: Path) -> None:
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)


def plain_tokens(path: Path, tok) -> None:
    with open(path, "rb") as f:
        for line in f:
            tok.apply_chat_template(json.loads(line)["messages"], tokenize=True)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_child(path: str, out: str, conn) -> None:
    start = _rss_kib("VmRSS")
    t = time.perf_counter()
    report = inspect_file(path, out_path=out)
    conn.send((report.ok, time.perf_counter() - t, (_rss_kib("VmHWM") - start) / 1024))


def memory_growth(path: Path, out: Path) -> tuple[bool, float, float]:
    """(ok, seconds, peak RSS growth in MiB) of inspect_file in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_memory_child, args=(str(path), str(out), child))
    p.start()
    result = parent.recv()
    p.join()
    return result


def row(case: str, mb: float, ours_s: float, base_s: float, base_name: str, cpu: tuple[float, float]) -> str:
    ours_c, base_c = cpu
    return (
        f"| {case} | {mb:.1f} | {mb / ours_s:.1f} | {mb / base_s:.1f} ({base_name}) | {base_s / ours_s:.2f} "
        f"| {mb / ours_c:.1f} | {mb / base_c:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--tok-mb", type=float, default=20)
    ap.add_argument("--mem-gb", type=float, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        big, arr, small = d / "big.jsonl", d / "big.json", d / "small.jsonl"
        generate(big, args.mb)
        generate(arr, args.mb, array=True)
        generate(small, args.tok_mb)
        mb_big, mb_arr, mb_small = (p.stat().st_size / 2**20 for p in (big, arr, small))

        print("| case | size (MB) | inspect_file (MB/s) | baseline (MB/s) | speed ratio ours/baseline "
              "| inspect_file (MB per CPU s) | baseline (MB per CPU s) |")
        print("|---|---|---|---|---|---|---|")
        base = timed(lambda: plain_parse(big))
        ours = timed(lambda: inspect_file(big, out_path=d / "out.jsonl"))
        print(row("JSONL, no tokenizer", mb_big, ours, base, "json.loads", (CPU[-1], CPU[-2])))
        ours = timed(lambda: inspect_file(arr, out_path=d / "out.jsonl"))
        print(row("JSON array, no tokenizer", mb_arr, ours, base * mb_arr / mb_big, "json.loads",
                  (CPU[-1], CPU[-3] * mb_arr / mb_big)))
        alp = d / "alpaca.json"
        generate_alpaca(alp, args.mb / 2)
        mb_alp = alp.stat().st_size / 2**20
        base = timed(lambda: json.loads(alp.read_bytes()))
        ours = timed(lambda: inspect_file(alp, out_path=d / "out.jsonl"))
        print(row("Alpaca JSON array, no tokenizer", mb_alp, ours, base, "json.loads of the file",
                  (CPU[-1], CPU[-2])))

        from ml.models import load_tokenizer
        from tests.support.models import tiny_llama_dir

        tok = load_tokenizer(tiny_llama_dir())
        base = timed(lambda: plain_tokens(small, tok))
        ours = timed(lambda: inspect_file(small, tokenizer=tok, out_path=d / "out.jsonl"))
        print(row("JSONL, SmolLM2 tokenizer", mb_small, ours, base, "apply_chat_template", (CPU[-1], CPU[-2])))

        if args.mem_gb:
            huge = d / "huge.jsonl"
            generate(huge, args.mem_gb * 1024)
            mb = huge.stat().st_size / 2**20
            ok, secs, growth = memory_growth(huge, d / "huge-out.jsonl")
            print(f"\n{mb:.0f} MB JSONL: ok={ok}, {secs:.1f} s ({mb / secs:.1f} MB/s), "
                  f"peak memory growth {growth:.1f} MiB")


if __name__ == "__main__":
    main()
