"""RL rollouts: sampling a batch of responses from the PPO policy with the engine's decoder vs transformers'
generate, same policy object (SmolLM2-135M-Instruct + a LoRA adapter on every linear layer, float32 as a
PPO job loads it), same prompts, same threads, alternating rounds; each row reports its fastest round.

Three samplers: generate; the engine decoder calling PEFT's LoRA layers as they are (live); the engine decoder
over a snapshot of the policy with each LoRA update merged into its fused, prepacked projection (what PPO,
GRPO and RLOO run: the merge is redone per call and its time is counted). All sample with temperature 1.0
and stop a row at its end-of-turn token, so rows end at different lengths: the figure is response tokens (up to and including the end token) per second.

    OMP_NUM_THREADS=2 .venv/bin/python bench/rollout_bench.py [--prompts 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from serve_bench import QUESTIONS  # the same prompts as the serving benchmark

from ml.config import LoraSettings
from ml.data.render import render_prompt
from ml.models import load_causal_lm, load_tokenizer
from ml.records import Message
from ml.rl.config import SamplingSettings
from ml.rl.ppo_policy import ActorCritic
from ml.rl.rollout import eos_token_ids, pad_prompts, response_mask
from ml.serve.batch_sample import sample_batch
from tests.support.models import smollm2_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="max_new_tokens (PPO's default)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = smollm2_dir()
    tok = load_tokenizer(base)
    sampling = SamplingSettings(max_new_tokens=args.tokens, temperature=1.0)
    model = ActorCritic.build(load_causal_lm(base), LoraSettings(), sampling)
    qs = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    ids, mask = pad_prompts([render_prompt(tok, [Message("user", q)]) for q in qs], tok.pad_token_id)
    eos = eos_token_ids(tok, model.policy)
    ids, mask = ids.to(model.device), mask.to(model.device)  # a PPO job puts the policy on the GPU when there is one

    def hf():
        return model.policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                     max_new_tokens=args.tokens, pad_token_id=tok.pad_token_id,
                                     eos_token_id=eos, use_cache=True)

    def engine():  # what PPO runs: a merged snapshot of the policy per call (merge time included)
        return model.generate(ids, mask, sampling, tok.pad_token_id, eos)

    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def live():  # the engine decoder calling PEFT's LoRA layers as they are (no snapshot)
        runner = model._sampler.runner(ids.shape[1] + args.tokens)
        out = sample_batch(runner, prompts, max_new_tokens=args.tokens, eos_ids=eos, pad_id=tok.pad_token_id)
        return torch.cat([ids, out.to(ids.device)], dim=1)

    samplers = [("generate", hf), ("engine", engine), ("live", live)]  # engine first: it builds model._sampler
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name, _ in samplers}
    with torch.no_grad():
        for _, fn in samplers:  # warm-up
            fn()
        assert model._sampler.merged, "the engine sampled the live layers, not a merged snapshot"
        for r in range(args.repeat):
            for name, fn in (samplers if r % 2 == 0 else samplers[::-1]):
                torch.manual_seed(r)
                t = time.perf_counter()
                out = fn()
                wall = time.perf_counter() - t
                resp, _ = response_mask(out[:, ids.shape[1]:], eos)
                runs[name].append((wall, int(resp.sum())))
    print(f"\nSmolLM2-135M-Instruct + LoRA (r={LoraSettings().r}, all linear), float32, {args.threads} threads, "
          f"{args.prompts} prompts, up to {args.tokens} new tokens, temperature 1.0, best of {args.repeat}\n")
    print("| sampler | wall s | response tokens | tokens/s | vs generate |")
    print("|---|---|---|---|---|")
    best = {k: max(v, key=lambda x: x[1] / x[0]) for k, v in runs.items()}
    ref = best["generate"][1] / best["generate"][0]
    for name, label in (("generate", "transformers `generate`"),
                        ("live", "engine decoder over PEFT's LoRA layers (`DecoderRunner(live=True)`)"),
                        ("engine", "engine decoder over a merged snapshot per call (what PPO/GRPO/RLOO run)")):
        wall, n = best[name]
        print(f"| {label} | {wall:.2f} | {n} | {n / wall:.1f} | {n / wall / ref:.2f}x |")


if __name__ == "__main__":
    main()
