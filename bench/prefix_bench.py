"""Prefix-caching benchmark on SmolLM2-135M: time to first token with a ~1,000-token shared system prompt.

The same requests (one shared system prompt, eight different questions, one after another) go to an
engine with the prefix cache and to one without it, in the same process with the same thread count;
phases alternate (off, on, off, on, ...) so a noisy neighbour hits both. Each phase loads a fresh
engine, warms it up on an unrelated prompt of the same length, then sends the eight requests: with the cache, the first
one computes and stores the prefix (the miss row: what storing costs) and the next seven reuse it. Rows report the
median TTFT of requests 2-8 of the fastest phase; greedy outputs of both engines must be
token-identical. Timings on a shared machine are noisy: compare ratios.

    OMP_NUM_THREADS=2 .venv/bin/python bench/prefix_bench.py [--dtype bfloat16] [--prefix 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ml.data.render import render_prompt
from ml.models import load_tokenizer
from ml.serve import Engine, GenerationRequest
from tests.support.models import smollm2_dir

QUESTIONS = [
    "My order arrived with a cracked screen. What should I do?",
    "Can I change the delivery address after ordering?",
    "Do you ship to Norway?",
    "How long does a refund take?",
    "The tracking page has not updated for five days.",
    "Can I pay with a gift card and a credit card together?",
    "I was charged twice for the same order.",
    "Is the blue kettle back in stock?",
]
TOPICS = ["returns", "refunds", "shipping", "payments", "accounts", "warranty", "stock", "privacy"]
VERBS = ["explain", "confirm", "check", "never promise", "offer", "ask about", "summarise", "apologise for"]


def system_prompt(tok, tokens: int) -> str:
    """A support-desk policy of numbered rules, just long enough to render to `tokens` tokens."""
    rules: list[str] = ["You are the support assistant of a small online shop. Follow these rules."]
    i = 0
    while len(render_prompt(tok, [{"role": "system", "content": "\n".join(rules)}])) < tokens:
        topic, verb = TOPICS[i % len(TOPICS)], VERBS[(i // len(TOPICS) + i) % len(VERBS)]
        rules.append(
            f"{i + 1}. When a customer writes about {topic}, {verb} the relevant policy in plain words, "
            f"quote order numbers exactly, and keep the answer under {40 + 5 * (i % 7)} words."
        )
        i += 1
    return "\n".join(rules)


def ttft(engine: Engine, prompt: list[int], n: int) -> tuple[float, list[int], int]:
    """Seconds from submit to the first token, the greedy tokens, and the prompt tokens reused."""
    t0 = time.perf_counter()
    first, tokens, cached = None, [], 0
    for ev in engine.submit(GenerationRequest(prompt, max_tokens=n, temperature=0, stop_token_ids=[])):
        if ev.token_ids and first is None:
            first = time.perf_counter() - t0
        tokens.extend(ev.token_ids)
        if ev.usage is not None:
            cached = ev.usage.cached_tokens
    return first, tokens, cached


def phase(base: Path, dtype: str, cache_mb: float, warm: list[int], prompts: list[list[int]], n: int) -> dict:
    with Engine(base, dtype=dtype, max_batch_size=8, prefix_cache_mb=cache_mb) as engine:
        ttft(engine, warm, 2)  # allocator, kernels at every shape; shares no block with the prompts
        before = engine.stats().prefill_tokens_computed_total
        runs = [ttft(engine, p, n) for p in prompts]
        computed = engine.stats().prefill_tokens_computed_total - before
    return {
        "cold": runs[0][0],
        "ttft": statistics.median(r[0] for r in runs[1:]),
        "tokens": [r[1] for r in runs],
        "cached": [r[2] for r in runs],
        "computed": computed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--prefix", type=int, default=1000, help="tokens of the shared system prompt")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per request (checked identical)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--repeat", type=int, default=3, help="phases per mode; rows report the fastest")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    base = smollm2_dir()
    tok = load_tokenizer(base)
    system = system_prompt(tok, args.prefix)
    prompts = [
        render_prompt(tok, [{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in QUESTIONS
    ]
    shared = 0  # leading tokens all eight prompts have in common
    while all(len(p) > shared and p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    warm = render_prompt(tok, [{"role": "user", "content": system.replace("customer", "client")}])

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.repeat):
        runs["off"].append(phase(base, args.dtype, 0, warm, prompts, args.tokens))
        runs["on"].append(phase(base, args.dtype, 256, warm, prompts, args.tokens))
    off, on = (min(runs[k], key=lambda r: r["ttft"]) for k in ("off", "on"))
    identical = all(r["tokens"] == runs["off"][0]["tokens"] for k in runs for r in runs[k])

    lengths = [len(p) for p in prompts]
    print(
        f"\nSmolLM2-135M-Instruct, {args.dtype}, {args.threads} threads, {shared}-token shared system prompt, "
        f"8 questions ({min(lengths)}-{max(lengths)} prompt tokens) sent one after another, "
        f"{args.tokens} new tokens, greedy; fastest of {args.repeat} alternating phases\n"
    )
    print("| engine | TTFT, requests 2-8 (median) | prompt tokens reused / computed, all 8 | speed-up |")
    print("|---|---|---|---|")
    print(f"| prefix cache off | {off['ttft'] * 1e3:.0f} ms | 0 / {off['computed']} | 1.00x |")
    print(
        f"| prefix cache on | {on['ttft'] * 1e3:.0f} ms | {sum(on['cached'])} / {on['computed']} | "
        f"{off['ttft'] / on['ttft']:.2f}x |"
    )
    print(
        f"| prefix cache on, request 1 (a miss: computes and stores the prefix) | {on['cold'] * 1e3:.0f} ms | "
        f"{on['cached'][0]} / {lengths[0]} | {off['ttft'] / on['cold']:.2f}x |"
    )
    print(f"\nTTFT speed-up with a shared prefix: {off['ttft'] / on['ttft']:.2f}x (target >= 4x)")
    print(f"greedy outputs token-identical with and without the cache: {'yes' if identical else 'NO'}")
    print(
        f"load average at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
