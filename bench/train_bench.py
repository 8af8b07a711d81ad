"""Training throughput: run_supervised (LoRA, packed rows) vs the plain Hugging Face way (Trainer + peft,
each micro-batch padded to its longest example), same Alpaca sample, model, LoRA shape, batch, threads.

Tokens/s counts real (non-padding) tokens over the training steps only (model loading and checkpoint
writing excluded: from on_train_begin to the last on_step_end), per wall second and per CPU second of
this process (the stable figure when the machine is shared). One run each, in one process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/train_bench.py --examples 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ml.config import LoraSettings, SupervisedConfig
from ml.events import PrintSink
from ml.records import Conversation, Message, write_canonical

ALPACA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "samples" / "sft_tatsu_alpaca_first335.json"


class StepClock(TrainerCallback):
    """Wall and process CPU time from on_train_begin to the last on_step_end.

    CPU time (all threads of this process) is the stable number on a shared machine: other people's
    jobs stretch wall time but not the work this process does.
    """

    def on_train_begin(self, args, state, control, **kw):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.last, self.cpu_last = self.start, self.cpu_start
        self.steps = 0

    def on_step_end(self, args, state, control, **kw):
        self.last, self.cpu_last = time.perf_counter(), time.process_time()
        self.steps += 1

    @property
    def seconds(self) -> float:
        return self.last - self.start

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_last - self.cpu_start


def alpaca_conversations(n: int) -> list[Conversation]:
    rows = json.loads(ALPACA.read_text())[:n]
    out = []
    for r in rows:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append(Conversation((Message("user", prompt), Message("assistant", r["output"]))))
    return out


def run_ours(model_path: Path, train: Path, work: Path, args, packing: bool) -> dict:
    from ml.train.sft import run_supervised

    clock = StepClock()
    cfg = SupervisedConfig(
        n_epochs=1,
        batch_size=args.batch,
        micro_batch_size=args.batch,
        learning_rate=2e-4,
        lora=LoraSettings(r=16, alpha=32, dropout=0.05),
        max_seq_length=args.max_len,
        packing=packing,
        bf16=args.bf16,
        warmup_ratio=0.0,
        checkpoint_interval=10_000,
    )
    r = run_supervised(
        cfg, model_path, train, None, work / f"ours-{packing}", PrintSink(verbose=False), callbacks=[clock]
    )
    return {
        "tokens": r.trained_tokens,
        "seconds": clock.seconds,
        "steps": clock.steps,
        "cpu": clock.cpu_seconds,
    }


def run_plain(model_path: Path, train: Path, work: Path, args) -> dict:
    """The usual recipe: rendered examples, DataCollatorForSeq2Seq padding to the longest in the batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    from ml.models import load_tokenizer
    from ml.train.batches import tokenize_file

    tok = load_tokenizer(model_path)
    split = tokenize_file(tok, train, args.max_len)
    rows = [
        {"input_ids": r["input_ids"], "labels": r["labels"], "attention_mask": [1] * len(r["input_ids"])}
        for r in split.rows
    ]
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "plain"),
            per_device_train_batch_size=args.batch,
            num_train_epochs=1,
            learning_rate=2e-4,
            bf16=args.bf16,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=42,
        ),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
        callbacks=[clock],
    )
    trainer.train()
    return {
        "tokens": split.n_tokens,
        "seconds": clock.seconds,
        "steps": clock.steps,
        "cpu": clock.cpu_seconds,
    }


def padded_tokens(model_path: Path, train: Path, batch: int, max_len: int) -> tuple[int, int]:
    """(real, padded) token counts when consecutive micro-batches are padded to their longest example."""
    from ml.models import load_tokenizer
    from ml.train.batches import tokenize_file

    lengths = [len(r["input_ids"]) for r in tokenize_file(load_tokenizer(model_path), train, max_len).rows]
    padded = sum(
        max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch)
    )
    return sum(lengths), padded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder (default: the SmolLM2 test model)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method (1 = stablest)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--skip-unpacked", action="store_true", help="do not run ours with packing off")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model_path = Path(args.model)
    else:
        from tests.support.models import smollm2_dir

        model_path = smollm2_dir()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "alpaca.jsonl"
        write_canonical(train, alpaca_conversations(args.examples))
        real, padded = padded_tokens(model_path, train, args.batch, args.max_len)
        results = {"plain HF Trainer + peft, pad to longest": run_plain(model_path, train, work, args)}
        if not args.skip_unpacked:
            results["run_supervised, packing off"] = run_ours(model_path, train, work, args, packing=False)
        results["run_supervised (packed rows)"] = run_ours(model_path, train, work, args, packing=True)

    base = results["plain HF Trainer + peft, pad to longest"]
    print(
        f"\nModel {model_path.name}, {args.examples} Alpaca examples ({real:,} tokens; padding to the longest "
        f"per batch of {args.batch} in file order would make {padded:,}), LoRA r=16 all-linear, bf16 "
        f"{'on' if args.bf16 else 'off'}, {args.threads} thread(s), 1 epoch, batch {args.batch}.\n"
    )
    print("| method | steps | tokens | wall s | tokens/s (wall) | CPU s | tokens/CPU-s | vs plain (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['steps']} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} "
            f"| {r['cpu']:.1f} | {r['tokens'] / r['cpu']:.0f} | {base['cpu'] / r['cpu']:.2f}x |"
        )


if __name__ == "__main__":
    main()
