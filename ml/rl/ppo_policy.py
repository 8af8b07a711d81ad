"""The PPO actor-critic: a LoRA causal LM plus a scalar value head on its last hidden state.

Owns building it from a starting model, the one forward pass that yields per-token log-probs, values
and logits for the response part of padded [prompt | response] rows, the reference pass (same weights,
adapter disabled: no second copy of the model), sampling, and its trainable state for checkpoints.
It does not compute losses (ml.rl.ppo_math) or run the loop (ml.rl.ppo).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml.config import LoraSettings
from ml.rl.config import SamplingSettings
from ml.rl.ppo_math import logprobs_from_logits
from ml.train.trainable import lora_config

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b, zero-initialised so the first values are 0 rather than noise."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


@dataclass
class ResponseForward:
    logprobs: torch.Tensor  # (B, R) log p of each response token, at the sampling temperature
    values: torch.Tensor | None  # (B, R) V before each response token (None for the reference)
    logits: torch.Tensor  # (B, R, V) temperature-scaled logits that predicted each response token


class ActorCritic(nn.Module):
    """A PeftModel policy and its value head. Kept in eval mode: dropout would make the PPO ratio noisy."""

    def __init__(self, policy, value_head: ValueHead, temperature: float, bf16: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.temperature = temperature
        self.bf16 = bf16

    @classmethod
    def build(cls, base_model, lora: LoraSettings, sampling: SamplingSettings, bf16: bool = False):
        from peft import get_peft_model

        policy = get_peft_model(base_model, lora_config(lora))
        hidden = base_model.config.get_text_config().hidden_size
        model = cls(policy, ValueHead(hidden), sampling.temperature, bf16)
        model.eval()
        return model.to("cuda") if torch.cuda.is_available() else model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return self.value_head.linear.weight.device

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def forward_response(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, with_values: bool = True
    ) -> ResponseForward:
        """Score the response part (positions >= prompt_len) of left-padded prompt + right-padded response rows."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self._autocast():
            out = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=with_values,
                use_cache=False,
                # Project only the positions that predict response tokens (and the last, dropped below).
                logits_to_keep=input_ids.shape[1] - prompt_len + 1,
            )
        logits = out.logits[:, :-1].float() / self.temperature
        logprobs = logprobs_from_logits(logits, input_ids[:, prompt_len:])
        values = None
        if with_values:
            values = self.value_head(out.hidden_states[-1][:, prompt_len - 1 : -1].float())
        return ResponseForward(logprobs, values, logits)

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
        """Log-probs under the starting model: the same weights with the LoRA adapter switched off."""
        with self.policy.disable_adapter():
            return self.forward_response(input_ids, attention_mask, prompt_len, with_values=False).logprobs

    @torch.no_grad()
    def generate(
        self, input_ids, attention_mask, sampling: SamplingSettings, pad_token_id: int, eos_token_id
    ):
        """Prompt + sampled response rows ([N, P + R], transformers' generate layout) for left-padded
        prompts. Sampled with the serving engine's batched decoder over the live policy (its LoRA layers
        as they are now); transformers' generate where the engine cannot run the architecture."""
        if getattr(self, "_sampler", None) is None:
            from ml.serve.batch_sample import LiveSampler

            self._sampler = LiveSampler(self.policy)
        eos = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        responses = self._sampler.sample(
            prompts,
            max_new_tokens=sampling.max_new_tokens,
            eos_ids=eos,
            pad_id=pad_token_id,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
        if responses is not None:
            return torch.cat([input_ids, responses.to(input_ids.device)], dim=1)
        with self._autocast():
            return self.policy.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=sampling.temperature,
                top_k=sampling.top_k or None,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
                use_cache=True,
            )

    # Checkpoint state: the adapter weights (peft's own naming) and the value head.
    def save_trainable(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.policy.save_pretrained(str(folder))
        save_file(
            {k: v.contiguous() for k, v in self.value_head.state_dict().items()},
            str(folder / VALUE_HEAD_FILE),
        )

    def load_trainable(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = load_file(str(folder / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.policy, adapter)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint {folder} does not match the policy: {result.unexpected_keys[:5]}")
        self.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
