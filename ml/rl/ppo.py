"""PPO recipe (trl 1.16 has no PPOTrainer): prompts + a reward model (or callable) in, a LoRA adapter out.

Each step: sample one response per prompt (ml.rl.rollout), shape per-token rewards with the KL to the
frozen starting model, GAE, whitened advantages, then ppo_epochs of clipped policy + value updates over
minibatches. Owns the loop, its checkpoints (adapter, value head, optimizer, step, RNG; written
atomically, resumed exactly), cancel/pause through the JobSink, and the final adapter folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ml.events import JobSink
from ml.rl.config import PPOConfig
from ml.rl.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
)
from ml.rl.ppo_policy import ActorCritic
from ml.rl.prompts import read_prompts
from ml.rl.recipe import RLRun
from ml.rl.result import RLResult
from ml.rl.reward_source import RewardSource, as_reward_fn
from ml.rl.rollout import Rollouts, collect_rollouts
from ml.rl.start import load_start_causal_lm, write_policy_adapter
from ml.train.checkpoints import atomic_dir, checkpoint_dir, latest_checkpoint, rotate
from ml.train.recipe import Outcome, log_model_ready, stop_status

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"  # the name ml.train.checkpoints looks for in a complete checkpoint
RNG_FILE = "rng_state.pt"


def prompt_indices(n_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """Prompts of PPO step `step` (0-based): a fresh seeded shuffle per pass over the file, so any step's
    batch is known without replaying earlier ones (resume needs no data-loader state)."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[pos]))
    return out


def ppo_update(model: ActorCritic, optimizer, r: Rollouts, cfg: PPOConfig, step: int) -> dict[str, float]:
    """ppo_epochs passes of clipped policy + value loss over shuffled minibatches of one step's rollouts."""
    mask = r.response_mask
    rewards, kl = kl_shaped_rewards(r.logprobs, r.ref_logprobs, r.scores, mask, cfg.kl_coef)
    advantages, returns = gae(rewards, r.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    sums: dict[str, float] = {}
    n_updates = 0
    params = model.trainable_parameters()
    for _ in range(cfg.ppo_epochs):
        for mb in torch.randperm(len(r), generator=gen).to(mask.device).split(cfg.resolved_minibatch_size):
            m = mask[mb]
            fwd = model.forward_response(r.input_ids[mb], r.attention_mask[mb], r.prompt_len)
            pg = clipped_policy_loss(fwd.logprobs, r.logprobs[mb], advantages[mb], m, cfg.clip_range)
            vf = clipped_value_loss(fwd.values, r.values[mb], returns[mb], m, cfg.clip_range_value)
            loss = pg.loss + cfg.vf_coef * vf.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(fwd.logits), m)
            for k, v in (
                ("policy_loss", pg.loss),
                ("value_loss", vf.loss),
                ("clipfrac", pg.clipfrac),
                ("value_clipfrac", vf.clipfrac),
                ("approx_kl", pg.approx_kl),
                ("entropy", entropy),
                ("grad_norm", grad_norm),
            ):
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_updates += 1
    stats = {k: v / n_updates for k, v in sums.items()}
    seq_kl = kl.sum(1)
    stats.update(
        mean_reward=float(r.raw_scores.mean()),
        kl=float(seq_kl.mean()),
        non_score_reward=float((-cfg.kl_coef * seq_kl).mean()),
        total_reward=float((r.scores - cfg.kl_coef * seq_kl).mean()),
        response_length=float(mask.sum(1).mean()),
        ended_fraction=float(r.ended.float().mean()),
        value_mean=float(masked_mean(r.values, mask)),
        learning_rate=float(optimizer.param_groups[0]["lr"]),
    )
    return stats


def _save_checkpoint(
    model: ActorCritic, optimizer, ckpt_dir: Path, step: int, run: RLRun, metrics: dict[str, float]
) -> Path:
    cfg: PPOConfig = run.cfg
    final = checkpoint_dir(ckpt_dir, step)
    with atomic_dir(final, {"step": step, **run.identity}) as tmp:
        model.save_trainable(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(
            json.dumps(
                {"global_step": step, "max_steps": cfg.steps, "metrics": metrics, "config": cfg.to_dict()}
            )
        )
    rotate(ckpt_dir, cfg.keep_checkpoints)
    return final


def _load_checkpoint(model: ActorCritic, optimizer, folder: Path) -> int:
    model.load_trainable(folder)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True))
    rng = torch.load(folder / RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(json.loads((folder / STATE_FILE).read_text())["global_step"])


def run_ppo(
    cfg: PPOConfig,
    base_model: Path,
    prompts_file: Path,
    reward: RewardSource,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
    valid_file: Path | None = None,
) -> RLResult:
    """Optimise `base_model` (a full model folder or an SFT LoRA output) with PPO against `reward`.

    `reward` is a reward-model folder (ml.rl.reward) or a callable taking conversations (each ending
    with the sampled assistant reply) and returning one float each. `prompts_file` is a canonical
    prompts, preference or SFT file (ml.rl.prompts). output_dir gets checkpoints/checkpoint-N and, on
    success, model/: one PEFT adapter over the original base (an SFT adapter start is folded in).
    Status "paused" saves a checkpoint that resume=True continues from; "cancelled" saves nothing.
    With `valid_file` (prompts), the result's metrics include valid_mean_reward and valid_kl of the
    trained policy on those prompts.
    """
    run = RLRun.begin("ppo", cfg, base_model, output_dir, sink, resume)
    tokenizer = run.tokenizer
    prompts = read_prompts(prompts_file)
    reward_fn = as_reward_fn(reward)
    sink.log(
        f"PPO: {len(prompts)} prompts, {cfg.steps} steps of {cfg.rollouts_per_step} rollouts.",
        data={"n_prompts": len(prompts), "config": cfg.to_dict()},
    )
    model = ActorCritic.build(load_start_causal_lm(run.start), cfg.lora, cfg.sampling, cfg.bf16)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.learning_rate)
    log_model_ready(sink, "Policy ready (LoRA + value head)", model)

    ckpt_dir, found = run.open_checkpoints()
    step = _load_checkpoint(model, optimizer, found) if found is not None else 0
    if found is not None:
        sink.log(f"Resumed from checkpoint at step {step} of {cfg.steps}.", data={"step": step})
    metrics: dict[str, float] = {}
    stopped = None
    while step < cfg.steps:
        t0 = time.monotonic()
        batch = [prompts[i] for i in prompt_indices(len(prompts), step, cfg.rollouts_per_step, cfg.seed)]
        rollouts = collect_rollouts(model, tokenizer, batch, reward_fn, cfg)
        metrics = ppo_update(model, optimizer, rollouts, cfg, step)
        step += 1
        metrics["seconds_per_step"] = time.monotonic() - t0
        sink.metrics(step, metrics, cfg.steps)
        stopped = sink.control()
        if stopped == "cancel":
            sink.log(f"Cancel requested: stopping at step {step} of {cfg.steps}.")
            break
        if stopped == "pause" or step % cfg.checkpoint_interval == 0 or step == cfg.steps:
            path = _save_checkpoint(model, optimizer, ckpt_dir, step, run, metrics)
            sink.checkpoint(step, path, metrics)
            sink.log(
                f"Checkpoint saved at step {step} of {cfg.steps}. Sample reply: {rollouts.texts[0][:200]!r}",
                data={"step": step, "path": str(path)},
            )
        if stopped == "pause":
            sink.log(f"Training paused at step {step} of {cfg.steps}.")
            break

    status = stop_status(stopped, step, cfg.steps)
    outcome = Outcome(status, step, cfg.steps, metrics, latest_checkpoint(ckpt_dir))
    if not outcome.succeeded:
        return run.result(outcome)
    if valid_file is not None:
        valid = evaluate_policy(model, tokenizer, read_prompts(valid_file), reward_fn, cfg)
        if valid:
            metrics.update(valid)
            sink.metrics(step, valid, cfg.steps)
    final = run.save(lambda d: write_policy_adapter(model.policy, run.start, d), "lora", step,
                     metrics=metrics)
    sink.log(f"Training finished: {step} steps. Saved the adapter.", data={"path": str(final)})
    return run.result(outcome, final, metrics)


@torch.no_grad()
def evaluate_policy(model: ActorCritic, tokenizer, prompts, reward_fn, cfg: PPOConfig) -> dict[str, float]:
    """Mean reward and mean KL to the reference (summed over each response's tokens) of the policy's
    sampled responses to `prompts`: the validation metrics of an online RL run."""
    if not prompts:
        return {}
    torch.manual_seed(cfg.seed)  # the same samples for the same policy: comparable across runs
    rewards, kls = [], []
    for s in range(0, len(prompts), cfg.rollouts_per_step):
        r = collect_rollouts(model, tokenizer, prompts[s : s + cfg.rollouts_per_step], reward_fn, cfg)
        rewards.append(r.raw_scores.float().cpu())
        kls.append(((r.logprobs - r.ref_logprobs) * r.response_mask).sum(dim=1).float().cpu())
    return {"valid_mean_reward": float(torch.cat(rewards).mean()), "valid_kl": float(torch.cat(kls).mean())}
