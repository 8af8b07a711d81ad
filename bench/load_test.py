"""Sustained load on a real ChatForge service: many streaming chat clients over several fine-tuned adapters.

Starts the service (API + one worker, the embedded default unless --database-url/--broker-url are given)
with SmolLM2-135M-Instruct, fine-tunes `--adapters` LoRA adapters through the API (a few steps each, so
they are real jobs' outputs), warms the engine up (base model and each adapter used once), then runs `--clients` concurrent clients for `--duration` seconds. Each client
loops: pick an adapter (or the base) and a prompt of mixed length, stream a chat completion with the
official `openai` SDK, record time to first token and the gaps between tokens. A 429 is counted, its
Retry-After checked and honoured. Meanwhile a probe times `/v1/models` and `/v1/fine_tuning/jobs` every
0.5 s, and the API process's resident memory is sampled every 5 s. The probe runs twice: in a process of its
own (what a monitor or another user sees: the API's own latency) and inside the load generator's event loop
(which adds however long that loop, busy parsing 64 streams, takes to notice the answer).

Reports: requests, 2xx/429/5xx counts, connection errors (each with what it said), TTFT and inter-token latency p50/p99, aggregate tokens/s, the
non-chat routes' p50/p99, and resident memory at minute 1 vs the end (growth must stay under 5%), also
with the engines' bounded caches (key/value cache, prefix cache; from /metrics) taken out, which is what a
leak would show in.

    .venv/bin/python bench/load_test.py                    # 64 clients, 5 minutes, 4 adapters
    .venv/bin/python bench/load_test.py --clients 16 --duration 60   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx2 as httpx
import openai

from tests.support.models import smollm2_dir
from tests.support.service import start_service

TOPICS = ["the sea", "a lighthouse keeper", "bread", "winter", "a robot gardener", "trains", "the moon", "bees"]


def prompt(rnd: random.Random) -> str:
    """Short, medium or long prompts (about 10, 100 and 500 tokens)."""
    topic = rnd.choice(TOPICS)
    kind = rnd.choice(("short", "medium", "long"))
    if kind == "short":
        return f"Write one sentence about {topic}."
    body = " ".join(f"Note {i}: {topic} matters because of detail number {i}." for i in range(8 if kind == "medium"
                                                                                              else 40))
    return f"Here are some notes.\n{body}\nSummarise them in one sentence."


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def cache_mb(h) -> float:
    """The engines' bounded caches (key/value cache and prefix cache), from /metrics, in MB."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await h.get("/metrics", timeout=30)).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name in ("chatforge_engine_kv_cache_bytes", "chatforge_engine_prefix_cache_bytes"):
            total += sum(sample.value for sample in family.samples)
    return total / 1024**2


def train_adapters(client: openai.OpenAI, k: int, folder: Path) -> list[str]:
    rows = [{"messages": [{"role": "user", "content": f"Say hello number {i}."},
                          {"role": "assistant", "content": f"Hello number {i}!"}]} for i in range(16)]
    path = folder / "hello.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    jobs = [client.fine_tuning.jobs.create(model="smollm2", training_file=f.id, suffix=f"load{i}", seed=i,
                                           method={"type": "supervised", "supervised": {
                                               "hyperparameters": {"batch_size": 4}, "max_steps": 2}})
            for i in range(k)]
    out = []
    for j in jobs:
        while (j := client.fine_tuning.jobs.retrieve(j.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
        if j.status != "succeeded":
            raise SystemExit(f"adapter job {j.id} {j.status}: {j.error}")
        out.append(j.fine_tuned_model)
    return out


async def run_load(base_url: str, key: str, models: list[str], clients: int, duration: float, max_tokens: int,
                   api_pid: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    stats = {"ok": 0, "429": 0, "429_without_retry_after": 0, "5xx": 0, "connection_errors": 0, "other": 0,
             "tokens": 0}
    errors: list[str] = []  # what each 5xx, connection error or other failure said
    ttft, itl, probes, rss = [], [], {"/models": [], "/fine_tuning/jobs": []}, []
    t0 = time.monotonic()
    end = t0 + duration

    async def one_client(i: int) -> None:
        rnd = random.Random(i)
        while time.monotonic() < end:
            start = time.monotonic()
            try:
                stream = await client.chat.completions.create(
                    model=rnd.choice(models), messages=[{"role": "user", "content": prompt(rnd)}],
                    max_tokens=max_tokens, temperature=0.7, stream=True)
                last = None
                async for chunk in stream:
                    if not chunk.choices or not chunk.choices[0].delta.content:
                        continue
                    now = time.monotonic()
                    if last is None:
                        ttft.append(now - start)
                    else:
                        itl.append(now - last)
                    last = now
                    stats["tokens"] += 1
                stats["ok"] += 1
            except openai.RateLimitError as e:
                stats["429"] += 1
                after = e.response.headers.get("retry-after")
                if after is None:
                    stats["429_without_retry_after"] += 1
                await asyncio.sleep(float(after or 1))
            except openai.APIStatusError as e:
                stats["5xx" if e.status_code >= 500 else "other"] += 1
                errors.append(f"{e.status_code}: {e.message}"[:300])
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                stats["connection_errors"] += 1
                errors.append(f"{type(e).__name__}: {e!r} (cause: {e.__cause__!r})"[:300])

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as h:
            while time.monotonic() < end:
                for path, times in probes.items():
                    s = time.monotonic()
                    r = await h.get(path, timeout=30)
                    times.append(time.monotonic() - s)
                    if r.status_code >= 500:
                        stats["5xx"] += 1
                        errors.append(f"{path} {r.status_code}: {r.text}"[:300])
                await asyncio.sleep(0.5)

    async def memory() -> None:
        async with httpx.AsyncClient(base_url=base_url.removesuffix("/v1")) as h:
            while time.monotonic() < end:
                rss.append((time.monotonic() - t0, rss_mb(api_pid), await cache_mb(h)))
                await asyncio.sleep(5)

    async def own_process_probe() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", base_url, key, str(duration), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        own.update(json.loads(out))

    own: dict[str, list[float]] = {}
    await asyncio.gather(*(one_client(i) for i in range(clients)), probe(), memory(), own_process_probe())
    wall = time.monotonic() - t0
    probes.update({f"own process {path}": times for path, times in own.items()})
    at_1, caches_1 = next(((m, c) for t, m, c in rss if t >= min(60.0, duration / 5)), (float("nan"),) * 2)
    final, caches_end = rss[-1][1:] if rss else (float("nan"),) * 2
    return {**stats, "wall_s": wall, "tokens_per_s": stats["tokens"] / wall,
            "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "itl_p50": pct(itl, 0.5),
            "itl_p99": pct(itl, 0.99),
            **{f"{p}_p50_ms": 1000 * pct(v, 0.5) for p, v in probes.items()},
            **{f"{p}_p99_ms": 1000 * pct(v, 0.99) for p, v in probes.items()},
            "rss_minute_1_mb": at_1, "rss_end_mb": final, "rss_growth": final / at_1 - 1,
            "caches_minute_1_mb": caches_1, "caches_end_mb": caches_end,
            "rss_less_caches_growth": (final - caches_end) / (at_1 - caches_1) - 1, "errors": errors[:20]}


def probe_only(base_url: str, key: str, duration: float) -> None:
    """`--probe URL KEY SECONDS`: time the non-chat routes every 0.5 s from a process of its own; JSON on stdout."""
    times: dict[str, list[float]] = {"/models": [], "/fine_tuning/jobs": []}
    end = time.monotonic() + duration
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as h:
        while time.monotonic() < end:
            for path, ts in times.items():
                s = time.monotonic()
                h.get(path, timeout=30)
                ts.append(time.monotonic() - s)
            time.sleep(0.5)
    print(json.dumps(times))


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        return probe_only(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=300)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=None,
                   help="the API's CHATFORGE_SERVE_MAX_QUEUE (default 64); below clients - 8 some requests get 429")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the service's processes (e.g. MALLOC_ARENA_MAX=2), repeatable")
    p.add_argument("--database-url")
    p.add_argument("--broker-url")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {} if a.max_queue is None else {"CHATFORGE_SERVE_MAX_QUEUE": str(a.max_queue)}
        env.update(item.split("=", 1) for item in a.server_env)
        svc = start_service(Path(tmp) / "svc", a.database_url, a.broker_url, workers=1,
                            models={"smollm2": smollm2_dir()}, **env)
        try:
            key = svc.key("load")
            client = openai.OpenAI(base_url=svc.v1, api_key=key, max_retries=0, timeout=600)
            t = time.monotonic()
            adapters = train_adapters(client, a.adapters, Path(tmp))
            print(f"{len(adapters)} adapters fine-tuned in {time.monotonic() - t:.0f} s", flush=True)
            for w in svc.workers:  # the load is on serving; the idle worker would only add noise
                w.stop()
            t = time.monotonic()
            for m in ["smollm2", *adapters]:  # warm-up: base model load and each adapter's first use
                client.chat.completions.create(model=m, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            print(f"warm-up took {time.monotonic() - t:.0f} s", flush=True)
            r = asyncio.run(run_load(svc.v1, key, ["smollm2", *adapters], a.clients, a.duration, a.max_tokens,
                                     svc.api.popen.pid))
        finally:
            svc.stop()
    print(json.dumps(r, indent=1))
    print(f"\n| clients | duration | adapters | requests ok | 429 (no Retry-After) | 5xx | connection errors | tokens/s "
          f"| TTFT p50 / p99 | ITL p50 / p99 | /v1/models p99 (own process / in the load loop) "
          f"| /v1/fine_tuning/jobs p99 (own process / in the load loop) | RSS min 1 → end "
          f"| RSS less the engine caches |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {a.clients} | {r['wall_s']:.0f} s | {a.adapters} + base | {r['ok']} | {r['429']} "
          f"({r['429_without_retry_after']}) | {r['5xx']} | {r['connection_errors']} | {r['tokens_per_s']:.1f} "
          f"| {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} s | {1000 * r['itl_p50']:.0f} / {1000 * r['itl_p99']:.0f} ms "
          f"| {r['own process /models_p99_ms']:.0f} / {r['/models_p99_ms']:.0f} ms "
          f"| {r['own process /fine_tuning/jobs_p99_ms']:.0f} / {r['/fine_tuning/jobs_p99_ms']:.0f} ms "
          f"| {r['rss_minute_1_mb']:.0f} → {r['rss_end_mb']:.0f} MB ({100 * r['rss_growth']:+.1f}%) "
          f"| {r['rss_minute_1_mb'] - r['caches_minute_1_mb']:.0f} → {r['rss_end_mb'] - r['caches_end_mb']:.0f} MB "
          f"({100 * r['rss_less_caches_growth']:+.1f}%) |")


if __name__ == "__main__":
    main()
