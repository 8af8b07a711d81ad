"""Do the supervised defaults teach a small dataset? Sweep batch size, epochs and adapter on SmolLM2.

For each made-up fact in tests/support/facts.py (~40 rows: 30 about the fact, 10 general) an upload file
is written in OpenAI chat JSONL or alpaca JSON and converted by ml.data (the path uploads take). Each
setting trains with ml.train.sft.run_supervised, everything not named left at its default, then the
adapter answers the fact's held-out paraphrases and the general questions greedily. A fact is learned
when >= 4 of its 5 paraphrases state it; forgetting is general accuracy before vs after.

    python -m bench.fact_sweep                      # the full sweep, markdown table on stdout
    python -m bench.fact_sweep --adapters lora --batch-sizes 4 --facts zephyr_code_name --lrs 5e-4,1e-3
    python -m bench.fact_sweep --plan rotate        # one fact per setting, each adapter meets every fact
    python -m bench.fact_sweep --check-general      # which GENERAL_EVAL questions the base model gets right

Settings with the same resolved values (n_epochs "auto" resolves to 3 for ~40 rows) run once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from ml.config import SupervisedConfig, auto_epochs
from ml.data.inspect import inspect_file
from ml.data.render import render_prompt
from ml.events import PrintSink
from ml.models import load_causal_lm, load_tokenizer
from ml.train.sft import run_supervised
from tests.support.facts import (
    FACTS,
    GENERAL_EVAL,
    fact_rows,
    general_correct,
    write_alpaca_json,
    write_chat_jsonl,
)
from tests.support.models import smollm2_dir

FORMATS = {"zephyr_code_name": "chat", "velmora_founding_year": "alpaca", "quintara_flag_colour": "chat"}
LEARNED_AT = 4  # of 5 held-out paraphrases


def prepare(fact, fmt: str, folder: Path, tokenizer) -> tuple[Path, int]:
    """Write the upload file in `fmt` and convert it the way an upload is converted; canonical path, rows."""
    pairs = fact_rows(fact)
    raw = folder / f"{fact.name}.{'jsonl' if fmt == 'chat' else 'json'}"
    (write_chat_jsonl if fmt == "chat" else write_alpaca_json)(raw, pairs)
    out = folder / f"{fact.name}.canonical.jsonl"
    report = inspect_file(raw, tokenizer=tokenizer, out_path=out)
    if not report.ok:
        raise SystemExit(f"{raw.name} did not convert: {report.errors[:3]}")
    return out, report.n_examples


@torch.no_grad()
def answer(model, tokenizer, questions: list[str], max_new_tokens: int = 32, batch: int = 16) -> list[str]:
    """Greedy answers, prompts rendered by ml.data.render exactly as serving renders them."""
    model.eval()
    pad = tokenizer.pad_token_id
    out: list[str] = []
    for s in range(0, len(questions), batch):
        ids = [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions[s : s + batch]]
        width = max(map(len, ids))
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=pad)
        out += tokenizer.batch_decode(y[:, width:], skip_special_tokens=True)
    return out


def evaluate(model, tokenizer, facts) -> dict:
    general_q = [q for q, _ in GENERAL_EVAL]
    fact_q = [q for f in facts for q in f.held_out]
    answers = answer(model, tokenizer, general_q + fact_q)
    general = [general_correct(a, acc) for a, (_, acc) in zip(answers, GENERAL_EVAL, strict=False)]
    res = {"general_acc": sum(general) / len(general), "general_wrong": [
        f"{q} -> {a.strip()[:60]}" for (q, _), a, ok in zip(GENERAL_EVAL, answers, general, strict=False) if not ok]}
    rest = answers[len(general_q):]
    for i, f in enumerate(facts):
        got = rest[i * 5 : (i + 1) * 5]
        res[f.name] = {"hits": sum(map(f.stated_in, got)), "sample": got[0].strip()[:80]}
    return res


def train_and_eval(cfg: SupervisedConfig, base: Path, data: Path, fact, tokenizer, work: Path) -> dict:
    from peft import PeftModel

    out = work / "run"
    t0 = time.monotonic()
    sink = PrintSink(verbose=False)
    res = run_supervised(cfg, base, data, None, out, sink, resume=False)
    train_s = time.monotonic() - t0
    model = PeftModel.from_pretrained(load_causal_lm(base), str(res.model_dir))
    ev = evaluate(model, tokenizer, [fact])
    losses = [v["train_loss"] for _, v in sink.steps if "train_loss" in v]
    r = res.config
    return {"steps": res.steps, "lr": r.peak_learning_rate, "epochs": r.n_epochs, "train_s": round(train_s, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None, **ev}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", default="lora,qlora")
    p.add_argument("--batch-sizes", default="1,4,8")
    p.add_argument("--epochs", default="auto,3")
    p.add_argument("--facts", default=",".join(f.name for f in FACTS))
    p.add_argument("--lrs", default="", help="explicit learning rates to try, comma-separated (probe runs)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (1 on a machine shared with other jobs: no spinning at barriers)")
    p.add_argument("--plan", choices=("full", "rotate"), default="full",
                   help="full: every fact for every setting; rotate: one fact per setting (a third of the time)")
    p.add_argument("--offset", type=int, default=0, help="rotate: shift which fact goes with which setting")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="a training setting for every run, e.g. --set retain_base=0 (repeatable)")
    p.add_argument("--check-general", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--before", type=Path, default=None,
                   help="cache of the base model's answers: read if it exists, else written (parallel sweeps)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = smollm2_dir()
    tokenizer = load_tokenizer(base)

    t0 = time.monotonic()
    if args.before and args.before.exists() and not args.check_general:
        before = json.loads(args.before.read_text())
    else:
        before = evaluate(load_causal_lm(base), tokenizer, FACTS)
        if args.before:
            args.before.write_text(json.dumps(before))
    print(f"base model: general {before['general_acc']:.0%}, wrong: {before['general_wrong']}", flush=True)
    for f in FACTS:
        print(f"base model on {f.name}: {before[f.name]}", flush=True)
    if args.check_general:
        return

    settings = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    facts = [f for f in FACTS if f.name in args.facts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = {f.name: prepare(f, FORMATS[f.name], work, tokenizer) for f in facts}
        lrs = [float(x) for x in args.lrs.split(",") if x] or [None]
        for ai, (adapter, lr) in enumerate([(a, lr) for a in args.adapters.split(",") for lr in lrs]):
            for bi, bs in enumerate(map(int, args.batch_sizes.split(","))):
                done: dict[tuple, dict] = {}
                # "rotate": one fact per (adapter, batch size), shifted so each adapter meets every fact
                chosen = [facts[(ai + bi + args.offset) % len(facts)]] if args.plan == "rotate" else facts
                for ep in args.epochs.split(","):
                    for f in chosen:
                        path, n = data[f.name]
                        epochs = "auto" if ep == "auto" else int(ep)
                        cfg = SupervisedConfig.from_dict({"adapter": adapter, "batch_size": bs, "n_epochs": epochs,
                                                          **settings})
                        if lr:
                            cfg = replace(cfg, learning_rate=lr)
                        key = (f.name, auto_epochs(n) if epochs == "auto" else epochs)
                        if key not in done:
                            done[key] = train_and_eval(cfg, base, path, f, tokenizer, work)
                        r = {"adapter": adapter, "batch_size": bs, "n_epochs": ep, "fact": f.name,
                             "format": FORMATS[f.name], "rows": n, **done[key]}
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    print(f"\nsweep took {time.monotonic() - t0:.0f} s\n")
    print(table(rows, before))
    if args.json:
        args.json.write_text(json.dumps({"before": before, "rows": rows}, indent=1))


def table(rows: list[dict], before: dict) -> str:
    lines = [
        f"Base model: general accuracy {before['general_acc']:.0%} ({len(GENERAL_EVAL)} questions).",
        "",
        ("| adapter | batch | n_epochs | fact (format) | lr | steps | loss first → last | paraphrases stated "
         "| learned | general before → after | train s |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r[r["fact"]]
        lines.append(
            f"| {r['adapter']} | {r['batch_size']} | {r['n_epochs']} ({r['epochs']}) | {r['fact']} ({r['format']}) "
            f"| {r['lr']:.2g} | {r['steps']} | {r['first_loss']:.2f} → {r['last_loss']:.2f} | {f['hits']}/5 "
            f"| {'yes' if f['hits'] >= LEARNED_AT else 'NO'} "
            f"| {before['general_acc']:.0%} → {r['general_acc']:.0%} | {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
