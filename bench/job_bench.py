"""A whole supervised LoRA job through the API vs the plain transformers Trainer + peft with bf16, same rows.

The job is measured as a user sees it: from `running` to `succeeded` (the training process starting, model
load, the replay set of retain_base, training, saving and publishing the adapter), with every setting at
its default except batch_size 8 and n_epochs 1 (the plain run's). Its real tokens are the job's
trained_tokens. The plain run is bench/train_bench.py's: Trainer + peft, bf16=True, padded to the longest
example per batch, its tokens/s over the training steps only (model load excluded), in this process on
the same number of threads. Prints a markdown table; one run each.

    .venv/bin/python bench/job_bench.py [--examples 64]
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


def run_job(examples: int, folder: Path) -> dict:
    rows = [{"messages": [{"role": m.role, "content": m.content} for m in c.messages]}
            for c in alpaca_conversations(examples)]
    path = folder / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    svc = start_service(folder / "svc", None, None, workers=1, models={"smollm2": smollm2_dir()})
    try:
        client = openai.OpenAI(base_url=svc.v1, api_key=svc.key("bench"), max_retries=0, timeout=600)
        f = client.files.create(file=path.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="smollm2", training_file=f.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8, "n_epochs": 1}}})
        running = None
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.1)
            job = client.fine_tuning.jobs.retrieve(job.id)
            if running is None and job.status == "running":
                running = time.monotonic()
        done = time.monotonic()
        if job.status != "succeeded":
            raise SystemExit(f"job {job.status}: {job.error}")
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500).data]
        return {"tokens": job.trained_tokens, "seconds": done - running, "steps": job.model_extra.get("step"),
                "events": events[::-1]}
    finally:
        svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the plain run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = smollm2_dir()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "train.jsonl"
        write_canonical(train, alpaca_conversations(args.examples))
        plain = run_plain(model, train, work, SimpleNamespace(batch=8, max_len=512, bf16=True))
        job = run_job(args.examples, work)
    print(f"\nSmolLM2-135M-Instruct, {args.examples} Alpaca rows, batch 8, 1 epoch, {args.threads} threads\n")
    print("| run | measured over | real tokens | seconds | tokens/s | vs plain bf16 Trainer |")
    print("|---|---|---|---|---|---|")
    ref = plain["tokens"] / plain["seconds"]
    print(f"| plain Trainer + peft, bf16 | training steps | {plain['tokens']} | {plain['seconds']:.1f} | {ref:.0f} "
          "| 1.00x |")
    rate = job["tokens"] / job["seconds"]
    print(f"| ChatForge job, defaults | running -> succeeded | {job['tokens']} | {job['seconds']:.1f} | {rate:.0f} "
          f"| {rate / ref:.2f}x |")
    print("\nJob events:\n" + "\n".join(f"  {m}" for m in job["events"]))


if __name__ == "__main__":
    main()
