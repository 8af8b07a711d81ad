"""RLOO and GRPO recipes on trl's maintained RLOOTrainer / GRPOTrainer, judged by our reward model.

Owns: prompts (any canonical file, ml.rl.prompts) as a dataset whose prompts are tokenised by
ml.data.render (trl's own chat templating is bypassed, prompts are cut from the left), the reward model
or callable wrapped as a trl reward function, LoRA with the adapter-disabled reference, the JobSink
callback, atomic checkpoints, resume, and the final adapter folder (relative to the original base,
like DPO's and PPO's). The group-baseline maths is trl's.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
import trl

from ml.data.render import render_prompt
from ml.events import JobSink
from ml.rl.callbacks import ONLINE_METRICS, RLSinkCallback, quiet_console
from ml.rl.config import GRPOConfig, RLOOConfig
from ml.rl.prompts import read_prompts
from ml.rl.result import CHECKPOINTS, FINAL, RLResult
from ml.rl.reward_source import RewardSource, TrlRewardFunc, as_reward_fn, decode_prompt, encode_prompt
from ml.rl.start import (
    load_start_causal_lm,
    load_start_tokenizer,
    materialize,
    resolve_start,
    write_policy_adapter,
)
from ml.rl.trainer_args import trl_args
from ml.train.callbacks import evaluate_final
from ml.train.checkpoints import AtomicCheckpointMixin, clean_partial, complete_checkpoints, latest_checkpoint
from ml.train.trainable import count_parameters, lora_config, save_trained

START_COPY = "start_model"  # merged SFT start, written only for full fine-tuning from an adapter


class _RenderedPrompts:
    """Tokenise prompts with ml.data.render (exactly as serving does) instead of trl's chat templating."""

    max_prompt_length: int = 512

    def _tokenize_prompts(self, prompts: list):
        from ml.records import Message

        ids = []
        for p in prompts:
            msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in decode_prompt(p)]
            ids.append(render_prompt(self.processing_class, msgs)[-self.max_prompt_length :])
        return ids, None, {}


class _GRPOTrainer(AtomicCheckpointMixin, _RenderedPrompts, trl.GRPOTrainer):
    pass


class _RLOOTrainer(AtomicCheckpointMixin, _RenderedPrompts, trl.RLOOTrainer):
    pass


def _method_fields(cfg: RLOOConfig | GRPOConfig) -> dict:
    s = cfg.sampling
    fields = {
        "num_generations": cfg.num_generations,
        "max_completion_length": s.max_new_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "beta": cfg.beta,
        "num_iterations": cfg.num_iterations,
        "epsilon": cfg.epsilon,
        "disable_dropout": True,
        "remove_unused_columns": False,
        "log_completions": False,
    }
    if isinstance(cfg, GRPOConfig):
        fields.update(loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards)
    return fields


def _run_online(
    method: str,
    cfg: RLOOConfig | GRPOConfig,
    base_model: Path,
    prompts_file: Path,
    reward: RewardSource,
    output_dir: Path,
    sink: JobSink,
    resume: bool,
    valid_file: Path | None = None,
) -> RLResult:
    from datasets import Dataset

    base_model, output_dir = Path(base_model), Path(output_dir)
    ckpt_dir = output_dir / CHECKPOINTS
    start = resolve_start(base_model)
    tokenizer = load_start_tokenizer(start)
    prompts = read_prompts(prompts_file)
    valid_prompts = read_prompts(valid_file) if valid_file else []
    reward_fn = TrlRewardFunc(as_reward_fn(reward), name="reward")
    sink.log(
        f"{method.upper()}: {len(prompts)} prompts, {cfg.num_generations} responses per prompt.",
        data={"n_prompts": len(prompts), "config": cfg.to_dict()},
    )

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(ckpt_dir)
    if not resume:
        for _, p in complete_checkpoints(ckpt_dir):
            shutil.rmtree(p)
    start_from = latest_checkpoint(ckpt_dir) if resume else None

    torch.manual_seed(cfg.seed)
    if cfg.adapter == "full":
        # trl re-loads the reference by path: give it one that holds the merged SFT weights.
        start_for_model = materialize(start, output_dir / START_COPY)
    else:
        start_for_model = start
    model = load_start_causal_lm(start_for_model)
    config_cls, trainer_cls = (
        (trl.GRPOConfig, _GRPOTrainer) if method == "grpo" else (trl.RLOOConfig, _RLOOTrainer)
    )
    # Validation prompts are only sampled and scored once, after training (mean reward and KL of the result).
    args = trl_args(config_cls, cfg, ckpt_dir, False, **_method_fields(cfg))
    callback = RLSinkCallback(sink, ONLINE_METRICS, n_examples=len(prompts))
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": encode_prompt(p)} for p in prompts]),
        eval_dataset=(
            Dataset.from_list([{"prompt": encode_prompt(p)} for p in valid_prompts]) if valid_prompts else None
        ),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora) if cfg.adapter == "lora" else None,
        callbacks=[callback],
    )
    trainer.max_prompt_length = cfg.max_prompt_length
    quiet_console(trainer)
    trainable, total = count_parameters(trainer.model)
    sink.log(
        f"{method.upper()} policy ready: {cfg.adapter}, {trainable:,} of {total:,} parameters trainable.",
        data={"trainable_params": trainable, "total_params": total},
    )
    trainer.checkpoint_info = {"base_model": str(start.base), "method": method}
    trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)
    evaluate_final(trainer, callback)

    state = trainer.state
    common = {
        "method": method,
        "base_model": start.base,
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "metrics": dict(callback.last_metrics),
        "checkpoint": latest_checkpoint(ckpt_dir),
        "config": cfg,
    }
    if callback.stopped is not None:
        return RLResult(
            status="paused" if callback.stopped == "pause" else "cancelled", model_dir=None, **common
        )

    policy = trainer.model
    if cfg.adapter == "lora":

        def write(folder: str) -> None:
            write_policy_adapter(policy, start, folder)
    else:

        def write(folder: str) -> None:
            policy.save_pretrained(folder)

    meta = {
        "base_model": str(start.base),
        "started_from": str(base_model),
        "method": method,
        "adapter": cfg.adapter,
        "is_adapter": cfg.adapter == "lora",
        "step": state.global_step,
        "metrics": common["metrics"],
        "config": cfg.to_dict(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    final = save_trained(output_dir / FINAL, tokenizer, meta, write)
    shutil.rmtree(output_dir / START_COPY, ignore_errors=True)
    sink.log(
        f"Saved the {method.upper()} {'adapter' if cfg.adapter == 'lora' else 'model'} to {final}.",
        data={"path": str(final)},
    )
    return RLResult(status="succeeded", model_dir=final, **common)


def run_rloo(
    cfg: RLOOConfig,
    base_model: Path,
    prompts_file: Path,
    reward: RewardSource,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
    valid_file: Path | None = None,
) -> RLResult:
    """RLOO (trl RLOOTrainer) on prompts from a canonical file, rewarded by a reward-model folder or callable."""
    return _run_online(
        "rloo", cfg, base_model, prompts_file, reward, output_dir, sink, resume, valid_file
    )


def run_grpo(
    cfg: GRPOConfig,
    base_model: Path,
    prompts_file: Path,
    reward: RewardSource,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
    valid_file: Path | None = None,
) -> RLResult:
    """GRPO (trl GRPOTrainer) on prompts from a canonical file, rewarded by a reward-model folder or callable."""
    return _run_online(
        "grpo", cfg, base_model, prompts_file, reward, output_dir, sink, resume, valid_file
    )
