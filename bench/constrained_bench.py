"""Constrained decoding libraries on SmolLM2's 49k vocabulary: xgrammar vs llguidance.

For each library: the time to compile a JSON schema (a fresh compiler, no cache), the time to build a
tool-call grammar, and the per-token cost of computing the allowed-token mask and advancing the matcher
while walking a valid JSON instance token by token (the work the engine adds per constrained row and
decode step). Also the cost of applying a mask to one row of logits. Prints a markdown table; numbers
on a shared machine are noisy, compare within one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/constrained_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ml.models import load_tokenizer
from tests.support.models import smollm2_dir

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "country": {"type": "string", "enum": ["FR", "DE", "US", "JP"]},
            },
            "required": ["street", "city", "country"],
            "additionalProperties": False,
        },
        "score": {"type": "number"},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "active"],
    "additionalProperties": False,
}
INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.org",
    "tags": ["math", "engines", "poetry"],
    "address": {"street": "12 St James's Square", "city": "London", "country": "US"},
    "score": 97.5,
    "active": True,
}


def bench_xgrammar(tok, vocab: int, ids: list[int], repeats: int) -> dict:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compile_s = []
    for _ in range(repeats):
        compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        t = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":"))
        compile_s.append(time.perf_counter() - t)
    mask = xgr.allocate_token_bitmask(1, vocab)
    per_token = []
    for _ in range(repeats):
        m = xgr.GrammarMatcher(compiled)
        t = time.perf_counter()
        for i in ids:
            m.fill_next_token_bitmask(mask, 0)
            assert m.accept_token(i), "instance rejected"
        per_token.append((time.perf_counter() - t) / len(ids))
    logits = torch.randn(1, vocab)
    t = time.perf_counter()
    for _ in range(200):
        xgr.apply_token_bitmask_inplace(logits, mask)
    apply_s = (time.perf_counter() - t) / 200
    return {"compile": min(compile_s), "per_token": min(per_token), "apply": apply_s}


def bench_llguidance(tok, vocab: int, ids: list[int], repeats: int) -> dict:
    import llguidance as llg
    import llguidance.hf
    import llguidance.torch as lt

    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    compile_s = []
    grammar = llg.LLMatcher.grammar_from_json_schema(
        SCHEMA, defaults={"whitespace_flexible": False}
    )
    for _ in range(repeats):
        t = time.perf_counter()
        m = llg.LLMatcher(lltok, grammar)
        assert not m.is_error(), m.get_error()
        compile_s.append(time.perf_counter() - t)
    mask = lt.allocate_token_bitmask(1, vocab)
    per_token = []
    for _ in range(repeats):
        m = llg.LLMatcher(lltok, grammar)
        t = time.perf_counter()
        for i in ids:
            lt.fill_next_token_bitmask(m, mask, 0)
            assert m.consume_token(i), m.get_error()
        per_token.append((time.perf_counter() - t) / len(ids))
    logits = torch.randn(1, vocab)
    t = time.perf_counter()
    for _ in range(200):
        lt.apply_token_bitmask_inplace(logits, mask)
    apply_s = (time.perf_counter() - t) / 200
    return {"compile": min(compile_s), "per_token": min(per_token), "apply": apply_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tok = load_tokenizer(smollm2_dir())
    vocab = 49152
    text = json.dumps(INSTANCE, separators=(",", ":"))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = [("xgrammar 0.2.9", bench_xgrammar(tok, vocab, ids, args.repeats)),
            ("llguidance 1.9.1", bench_llguidance(tok, vocab, ids, args.repeats))]
    print(f"{len(ids)} tokens walked, vocabulary {vocab}, torch threads {torch.get_num_threads()}\n")
    print("| library | schema compile (ms) | mask + advance per token (us) | apply mask to logits (us) |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['compile'] * 1e3:.1f} | {r['per_token'] * 1e6:.0f} | {r['apply'] * 1e6:.0f} |")


if __name__ == "__main__":
    main()
