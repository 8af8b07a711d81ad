"""RLOO and GRPO recipes on trl's maintained RLOOTrainer / GRPOTrainer, judged by our reward model.

Owns: prompts (any canonical file, ml.rl.prompts) as a dataset whose prompts are tokenised by
ml.data.render (trl's own chat templating is bypassed, prompts are cut from the left), the reward model
or callable wrapped as a trl reward function, LoRA with the adapter-disabled reference, the JobSink
callback, atomic checkpoints, resume, and the final adapter folder (relative to the original base,
like DPO's and PPO's). The group-baseline maths is trl's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import trl

from ml.data.render import render_prompt
from ml.events import JobSink
from ml.rl.callbacks import ONLINE_METRICS
from ml.rl.config import GRPOConfig, RLOOConfig
from ml.rl.prompts import read_prompts
from ml.rl.recipe import RLRun
from ml.rl.result import RLResult
from ml.rl.reward_source import RewardSource, TrlRewardFunc, as_reward_fn, decode_prompt, encode_prompt
from ml.rl.start import load_start_causal_lm, materialize, policy_writer
from ml.train.checkpoints import AtomicCheckpointMixin
from ml.train.trainable import lora_config

START_COPY = "start_model"  # merged SFT start, written only for full fine-tuning from an adapter


class _RenderedPrompts:
    """Tokenise prompts with ml.data.render (exactly as serving does) instead of trl's chat templating."""

    max_prompt_length: int = 512

    def __init__(self, *args, max_prompt_length: int | None = None, **kwargs) -> None:
        if max_prompt_length is not None:
            self.max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)

    def _tokenize_prompts(self, prompts: list):
        from ml.records import Message

        ids = []
        for p in prompts:
            msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in decode_prompt(p)]
            ids.append(render_prompt(self.processing_class, msgs)[-self.max_prompt_length :])
        return ids, None, {}


class _EngineRollouts:
    """Completions sampled with the serving engine's decoder over the live model (ml.serve.batch_sample)
    where trl would call transformers' generate: one process, no vLLM or continuous batching, text only,
    and only temperature / top-k / top-p warping. Anything else takes trl's own path."""

    _turn_returns_logprobs = True  # GRPO's turn gives (completions, logprobs); RLOO's the completions

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        completions = None
        if self._engine_can_sample(images, multimodal_fields):
            if getattr(self, "_live_sampler", None) is None:
                from ml.serve.batch_sample import LiveSampler

                self._live_sampler = LiveSampler(self.accelerator.unwrap_model(self.model))
            completions = self._live_sampler.sample(
                prompt_ids,
                max_new_tokens=self.max_completion_length,
                eos_ids=self.eos_token_ids,
                pad_id=self._tokenizer.pad_token_id,
                temperature=self.temperature,
                top_k=self.top_k or 0,
                top_p=1.0 if self.top_p is None else self.top_p,
            )
        if completions is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
        eos, out = set(self.eos_token_ids), []
        for row in completions.tolist():  # up to and including the first end token, as trl keeps them
            end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
            out.append(row[: end + 1])
        return (out, None) if self._turn_returns_logprobs else out

    def _engine_can_sample(self, images, multimodal_fields) -> bool:
        return (
            not self.use_vllm
            and not getattr(self, "use_transformers_continuous_batching", False)
            and self.accelerator.num_processes == 1
            and not (images and any(i is not None for i in images))
            and not multimodal_fields
            and self.min_p is None
            and self.repetition_penalty in (None, 1.0)
            and not self.args.generation_kwargs
        )


class _GRPOTrainer(AtomicCheckpointMixin, _RenderedPrompts, _EngineRollouts, trl.GRPOTrainer):
    pass


class _RLOOTrainer(AtomicCheckpointMixin, _RenderedPrompts, _EngineRollouts, trl.RLOOTrainer):
    _turn_returns_logprobs = False


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


def run_online(cfg: RLOOConfig | GRPOConfig, base_model: Path, prompts_file: Path, reward: RewardSource,
               output_dir: Path, sink: JobSink, resume: bool = True,
               valid_file: Path | None = None) -> RLResult:
    """RLOO (an RLOOConfig, trl RLOOTrainer) or GRPO (a GRPOConfig, trl GRPOTrainer) on prompts from a
    canonical file, rewarded by a reward-model folder or callable. Validation prompts are only sampled
    and scored once, after training (mean reward and KL of the result)."""
    method = "grpo" if isinstance(cfg, GRPOConfig) else "rloo"
    run = RLRun.begin(method, cfg, base_model, output_dir, sink, resume)
    prompts = read_prompts(prompts_file)
    cfg.check_examples(len(prompts))
    valid_prompts = read_prompts(valid_file) if valid_file else []
    sink.log(
        f"{method.upper()}: {len(prompts)} prompts, {cfg.num_generations} responses per prompt.",
        data={"n_prompts": len(prompts), "config": cfg.to_dict()},
    )
    # trl re-loads a full fine-tuning's reference by path: give it one that holds the merged SFT weights.
    start = materialize(run.start, Path(output_dir) / START_COPY) if cfg.adapter == "full" else run.start
    grpo = method == "grpo"
    trainer_cls, args_cls = (_GRPOTrainer, trl.GRPOConfig) if grpo else (_RLOOTrainer, trl.RLOOConfig)
    trainer, outcome = run.fit(
        trainer_cls,
        args_cls,
        load_start_causal_lm(start),
        ONLINE_METRICS,
        [{"prompt": encode_prompt(p)} for p in prompts],
        [{"prompt": encode_prompt(p)} for p in valid_prompts],
        method_fields=_method_fields(cfg),
        eval_while_training=False,
        reward_funcs=TrlRewardFunc(as_reward_fn(reward), name="reward"),
        peft_config=lora_config(cfg.lora) if cfg.adapter == "lora" else None,
        max_prompt_length=cfg.max_prompt_length,
    )
    if not outcome.succeeded:
        return run.result(outcome)
    final = run.save(policy_writer(trainer.model, run.start, cfg.adapter), cfg.adapter, outcome.steps,
                     metrics=outcome.metrics)
    shutil.rmtree(Path(output_dir) / START_COPY, ignore_errors=True)
    what = "adapter" if cfg.adapter == "lora" else "model"
    sink.log(f"Saved the {method.upper()} {what}.", data={"path": str(final)})
    return run.result(outcome, final)


# One recipe for both: the config's class says which method runs.
run_rloo = run_grpo = run_online
