"""Serving benchmark on SmolLM2-135M: the engine's continuous batching vs sequential HF generate.

Measures, with the same torch thread count: aggregate tokens/s of 8 (and 16) concurrent streaming clients vs 8
sequential `model.generate` calls; time to first token and inter-token latency (p50/p99) seen by the
clients; and the cost of serving 8 clients spread over 4 distinct LoRA adapters vs all on one adapter.
Rounds are interleaved and rotated; each row reports its fastest round. Prints a markdown table.
Timings on a shared machine are noisy: compare ratios.

The HF baseline (and making the test adapters) runs in a helper process, never on this process's
threads: like a serving process, this one leaves all torch work to the engine thread (see the note on
OpenMP pools in ml/serve/engine.py).

    OMP_NUM_THREADS=2 .venv/bin/python bench/serve_bench.py [--dtype bfloat16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ml.data.render import render_prompt
from ml.models import load_causal_lm, load_tokenizer
from ml.serve import Engine, GenerationRequest
from tests.support.models import smollm2_dir

QUESTIONS = [
    "Write a short story about a cat who learns to fly.",
    "Explain how a bicycle works to a ten-year-old.",
    "What are three good habits for writing clean Python code?",
    "Describe the water cycle in a few sentences.",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue? Answer briefly.",
    "List some tips for learning a new language.",
    "Summarise the plot of Romeo and Juliet.",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


def hf_sequential(model, prompts: list[list[int]], n: int) -> dict:
    """The plain Hugging Face way: one generate call after another."""
    latencies, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            t = time.perf_counter()
            model.generate(
                torch.tensor([p], device=model.device),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": n * len(prompts), "latency_p50": pct(latencies, 50)}


def helper_process(conn, base: str, dtype: str, threads: int, device: str) -> None:
    """Runs commands sent over `conn`: ("adapters", root, k, rank) and ("hf", prompts, n)."""
    torch.set_num_threads(threads)
    model = load_causal_lm(base, dtype=dtype).to(device).eval()
    while (msg := conn.recv()) is not None:
        if msg[0] == "adapters":
            conn.send([str(d) for d in make_adapters(Path(base), Path(msg[1]), msg[2], msg[3])])
        else:
            conn.send(hf_sequential(model, msg[1], msg[2]))


async def _client(engine: Engine, req: GenerationRequest, t0: float) -> dict:
    h = engine.submit(req)
    stamps = []
    async for ev in h:
        if ev.token_ids:
            stamps.append(time.perf_counter())
    return {"ttft": stamps[0] - t0, "itl": [b - a for a, b in itertools.pairwise(stamps)], "n": len(stamps)}


def engine_concurrent(engine: Engine, prompts, adapters: list[str | None], n: int) -> dict:
    async def run():
        t0 = time.perf_counter()
        reqs = [
            GenerationRequest(p, adapter=a, max_tokens=n, temperature=0, stop_token_ids=[])
            for p, a in zip(prompts, adapters)
        ]
        res = await asyncio.gather(*(_client(engine, r, t0) for r in reqs))
        return res, time.perf_counter() - t0

    res, wall = asyncio.run(run())
    ttft = [r["ttft"] for r in res]
    itl = [x for r in res for x in r["itl"]]
    return {
        "wall": wall,
        "tokens": sum(r["n"] for r in res),
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(itl, 50),
        "itl_p99": pct(itl, 99),
    }


def make_adapters(base: Path, root: Path, k: int, rank: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    out = []
    for i in range(k):
        torch.manual_seed(i)
        model = get_peft_model(
            load_causal_lm(base),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False),
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.mul_(0.05)
        model.save_pretrained(str(root / f"ad{i}"))
        out.append(root / f"ad{i}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each row reports its fastest round")
    ap.add_argument("--device", default="cpu", help="where both the engine and HF generate run (cpu, cuda)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.tokens
    load_start = os.getloadavg()[0]

    base = smollm2_dir()
    tok = load_tokenizer(base)
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]

    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    helper = ctx.Process(
        target=helper_process, args=(child_conn, str(base), args.dtype, args.threads, args.device)
    )
    helper.start()

    def hf_round() -> dict:
        conn.send(("hf", prompts, n))
        return conn.recv()

    engine = Engine(base, dtype=args.dtype, max_batch_size=16, max_total_tokens=1024, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        conn.send(("adapters", tmp, 4, args.rank))
        for i, d in enumerate(conn.recv()):
            engine.register_adapter(f"ad{i}", d)
        # warm-up: allocator, kernels, adapter loading
        engine_concurrent(engine, prompts[:2], ["ad0", "ad1"], 4)
        engine_concurrent(engine, prompts[:2], ["ad2", "ad3"], 4)
        conn.send(("hf", prompts[:1], 4))
        conn.recv()

        todo = {
            "hf": hf_round,
            "base": lambda: engine_concurrent(engine, prompts, [None] * 8, n),
            "one": lambda: engine_concurrent(engine, prompts, ["ad0"] * 8, n),
            "four": lambda: engine_concurrent(engine, prompts, [f"ad{i % 4}" for i in range(8)], n),
            "base16": lambda: engine_concurrent(engine, prompts * 2, [None] * 16, n),
        }
        runs: dict[str, list[dict]] = {k: [] for k in todo}
        order = list(todo)
        for r in range(args.repeat):  # interleaved and rotated, so a noisy neighbour hits every row
            for k in order[r % len(order) :] + order[: r % len(order)]:
                runs[k].append(todo[k]())
    engine.close()
    conn.send(None)
    helper.join()
    hf, base_run, one, four, base16 = (
        min(runs[k], key=lambda r: r["wall"]) for k in ("hf", "base", "one", "four", "base16")
    )

    def tps(r):
        return r["tokens"] / r["wall"]

    print(
        f"\nSmolLM2-135M-Instruct, {args.dtype}, {args.device}, {args.threads} threads, 8 prompts "
        f"({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x {n} new tokens, greedy, "
        f"r={args.rank} all-linear adapters, best of {args.repeat} interleaved rounds\n"
    )
    print("| run | wall s | tokens/s | vs HF sequential | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    print(
        f"| HF generate, sequential | {hf['wall']:.2f} | {tps(hf):.1f} | 1.00x | "
        f"(per request {hf['latency_p50'] * 1e3:.0f} ms p50) | |"
    )
    for label, r in (
        ("engine, 8 clients, base", base_run),
        ("engine, 8 clients, 1 adapter", one),
        ("engine, 8 clients, 4 adapters", four),
        ("engine, 16 clients, base", base16),
    ):
        print(
            f"| {label} | {r['wall']:.2f} | {tps(r):.1f} | {tps(r) / tps(hf):.2f}x | "
            f"{r['ttft_p50'] * 1e3:.0f} / {r['ttft_p99'] * 1e3:.0f} | "
            f"{r['itl_p50'] * 1e3:.0f} / {r['itl_p99'] * 1e3:.0f} |"
        )
    print(
        f"\n4 adapters vs 1 adapter: {four['wall'] / one['wall']:.2f}x the wall time (target <= 1.3x); "
        f"1 adapter vs base: {one['wall'] / base_run['wall']:.2f}x"
    )
    print(
        f"aggregate throughput vs sequential HF: 8 clients {tps(base_run) / tps(hf):.2f}x (target >= 10x), "
        f"16 clients {tps(base16) / tps(hf):.2f}x (target >= 12x)"
    )
    print(
        f"load average at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
