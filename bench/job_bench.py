"""A whole supervised LoRA job through the API vs the plain transformers Trainer + peft with bf16, same rows.

The job is measured as a user sees it: from `running` to `succeeded` (the training process starting, model
load, the replay set of retain_base, training, saving and publishing the adapter), with every setting at
its default except batch_size 8 and n_epochs 1 (the plain run's). Its real tokens are the job's
trained_tokens. Jobs run on new services (empty data folders, the bench's model as the default base model): one
with the warm runner off (every job ran so before it); one with the defaults whose first job is submitted as soon
as the service answers (it computes the retain_base replay set itself: the worker's waiting process, preparing
it, gives way); and one with the defaults whose first job comes `--first-gap` seconds after the service starts
(the idle worker has prepared the set) and whose later jobs come `--gap` seconds apart. The plain run is bench/train_bench.py's: Trainer + peft, bf16=True, padded to the longest
example per batch, its tokens/s over the training steps only (model load excluded), in this process on
the same number of threads. Prints a markdown table; one run each.

    .venv/bin/python bench/job_bench.py [--examples 64] [--jobs 2] [--gap 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
import torch
from train_bench import alpaca_conversations, run_plain

from ml.records import write_canonical
from tests.support.models import smollm2_dir
from tests.support.service import start_service


def run_jobs(examples: int, folder: Path, jobs: int, gap: float, first_gap: float, **env: str) -> list[dict]:
    """`jobs` identical jobs one after another on one new service (empty data folder), the first `first_gap`
    seconds after the service answers, the others `gap` seconds apart."""
    rows = [{"messages": [{"role": m.role, "content": m.content} for m in c.messages]}
            for c in alpaca_conversations(examples)]
    path = folder / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    svc = start_service(Path(tempfile.mkdtemp(dir=folder)), None, None, workers=1,
                        models={"smollm2": smollm2_dir()}, CHATFORGE_DEFAULT_BASE_MODEL="smollm2", **env)
    try:
        client = openai.OpenAI(base_url=svc.v1, api_key=svc.key("bench"), max_retries=0, timeout=600)
        f = client.files.create(file=path.open("rb"), purpose="fine-tune")
        out = []
        for i in range(jobs):
            time.sleep(first_gap if i == 0 else gap)
            out.append(_one_job(client, f.id))
        return out
    finally:
        svc.stop()


def _one_job(client: openai.OpenAI, file_id: str) -> dict:
    job = client.fine_tuning.jobs.create(model="smollm2", training_file=file_id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8, "n_epochs": 1}}})
    running = running_wall = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if running is None and job.status == "running":
            running, running_wall = time.monotonic(), time.time()
    done = time.monotonic()
    if job.status != "succeeded":
        raise SystemExit(f"job {job.status}: {job.error}")
    events = client.fine_tuning.jobs.list_events(job.id, limit=500).data[::-1]
    timeline = [f"{e.created_at - running_wall:+6.1f} s  {e.message}" for e in events]
    return {"tokens": job.trained_tokens, "seconds": done - running, "steps": job.model_extra.get("step"),
            "events": timeline}


def matmul_ceiling(threads: int) -> float:
    """The best bf16 matmul rate here (FLOP/s) over a large square product and SmolLM2's training shapes
    (2,048 rows: a packed micro-batch), same threads: the peak an MFU is measured against."""
    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576)):
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def mfu(tokens: int, seconds: float, params: int, peak: float) -> float:
    """Model FLOPs utilisation of LoRA training: 4 FLOPs per weight per real token (2 forward, 2 for the
    gradient with respect to the inputs; frozen weights get no weight gradient), over `peak`."""
    return 4 * params * tokens / seconds / peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=2, help="jobs run one after another (the first cold)")
    ap.add_argument("--gap", type=float, default=20, help="seconds between jobs (the worker idle)")
    ap.add_argument("--first-gap", type=float, default=45,
                    help="seconds from the service's start to its first job (the idle worker prepares the replay set)")
    ap.add_argument("--no-fp32", action="store_true", help="skip the plain float32 Trainer run")
    ap.add_argument("--no-cold", action="store_true",
                    help="skip the job on a worker without the warm runner (how every job ran before it)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the plain run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = smollm2_dir()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "train.jsonl"
        write_canonical(train, alpaca_conversations(args.examples))
        plain = run_plain(model, train, work, SimpleNamespace(batch=8, max_len=512, bf16=True))
        fp32 = None if args.no_fp32 else run_plain(model, train, work, SimpleNamespace(batch=8, max_len=512,
                                                                                        bf16=False))
        cold = None if args.no_cold else run_jobs(args.examples, work, 1, args.gap, args.gap,
                                                  CHATFORGE_WARM_RUNNER="0")[0]
        at_once = run_jobs(args.examples, work, 1, 0, 0)[0]
        jobs = run_jobs(args.examples, work, args.jobs, args.gap, args.first_gap)
    peak = matmul_ceiling(args.threads)
    params = 134_515_008  # SmolLM2-135M: every weight is a matmul operand (the output projection is tied)
    print(f"\nSmolLM2-135M-Instruct, {args.examples} Alpaca rows, batch 8, 1 epoch, {args.threads} threads; "
          f"bf16 matmul ceiling {peak / 1e9:.0f} GFLOP/s\n")
    print("| run | measured over | real tokens | seconds | tokens/s | vs plain bf16 Trainer | MFU |")
    print("|---|---|---|---|---|---|---|")
    ref = plain["tokens"] / plain["seconds"]
    print(f"| plain Trainer + peft, bf16 | training steps | {plain['tokens']} | {plain['seconds']:.1f} | {ref:.0f} "
          f"| 1.00x | {mfu(plain['tokens'], plain['seconds'], params, peak):.1%} |")
    if fp32 is not None:
        rate = fp32["tokens"] / fp32["seconds"]
        print(f"| plain Trainer + peft, float32 | training steps | {fp32['tokens']} | {fp32['seconds']:.1f} "
              f"| {rate:.0f} | {rate / ref:.2f}x | {mfu(fp32['tokens'], fp32['seconds'], params, peak):.1%} |")
    named = ([("job, warm runner off, first on its base model", cold)] if cold else []) + [
        ("first job on its base model, submitted as the service starts", at_once)] + [
        (f"first job on its base model, {args.first_gap:g} s after the service starts" if i == 0
         else f"job {i + 1} on the same base model", job) for i, job in enumerate(jobs)]
    for which, job in named:
        rate = job["tokens"] / job["seconds"]
        print(f"| ChatForge {which} | running -> succeeded | {job['tokens']} | {job['seconds']:.1f} "
              f"| {rate:.0f} | {rate / ref:.2f}x | {mfu(job['tokens'], job['seconds'], params, peak):.1%} |")
    for which, job in named:
        print(f"\n{which} (seconds from `running`):\n" + "\n".join(f"  {m}" for m in job["events"]))


if __name__ == "__main__":
    main()
