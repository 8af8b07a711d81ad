"""The worker's side of the serving engine, for eval runs: samples chat answers from a model id
through ml.serve (the same Engine, routing and prompt rendering as /v1/chat/completions, batched), and
scores conversations with reward models through ml.rl.reward_model (the same scorer as /v1/rewards).

Engines and reward models stay loaded in the worker process between runs (one EnginePool per dtype
and quantization, like the API's ServingHub). It does not grade or store anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chatforge.basemodels import model_dir
from chatforge.db.models import Model
from chatforge.db.session import session_scope
from chatforge.routing import NotAChatModel, Target, is_reward_model, model_folder, serving_target
from chatforge.settings import Settings
from chatforge.storage import Storage
from ml.evals import EvalSpecError

REWARD_CACHE = 2


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_tokens: int = 256
    seed: int = 42

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        d = {k: v for k, v in (d or {}).items() if v is not None and k in cls.__dataclass_fields__}
        return cls(**d)


@lru_cache(maxsize=16)
def _tokenizer(path: str):
    from ml.models import load_tokenizer

    return load_tokenizer(path)


class EvalSampler:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings, self.storage = settings, storage
        self._pools: dict[tuple[str, str], Any] = {}
        self._rewards: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _pool(self, dtype: str, quantization: str):
        from ml.serve import EnginePool

        key = (dtype, quantization)
        if key not in self._pools:
            self._pools[key] = EnginePool(
                resolve=lambda model_id: model_folder(self.storage, model_id), dtype=dtype,
                quantization=quantization, max_batch_size=self.settings.serve_max_batch,
                max_queue=max(self.settings.serve_max_queue, 4 * self.settings.serve_max_batch),
                adapter_cache_size=self.settings.adapter_cache_size)
        return self._pools[key]

    def _target(self, model_id: str) -> Target:
        with session_scope() as s:
            row = s.get(Model, model_id)
            if row is None:
                raise EvalSpecError(f"model {model_id!r} no longer exists", "model")
            try:
                return serving_target(row, self.settings, self.storage)
            except NotAChatModel as e:
                raise EvalSpecError(str(e), "model") from None

    def _engine(self, target: Target):
        engine = self._pool(target.dtype, target.quantization).get(target.engine_id)
        if target.adapter is not None:
            engine.register_adapter(target.adapter, target.adapter_dir)  # idempotent; loads on first use
        return engine

    def sample(self, model_id: str, conversations: list[list[dict]], params: SamplingParams,
               seeds: list[int]) -> list[dict[str, Any]]:
        """One answer per conversation, all submitted at once so the engine batches them. Each answer is
        {"output_text", "finish_reason", "usage", "error"}; an item the engine refuses (too long) gets an
        error instead of failing the run."""
        from ml.data.render import render_prompt
        from ml.serve import GenerationRequest, ServeError

        target = self._target(model_id)
        engine = self._engine(target)
        tokenizer = engine.tokenizer
        if target.adapter_dir is not None and (target.adapter_dir / "tokenizer_config.json").exists():
            tokenizer = _tokenizer(str(target.adapter_dir))
        handles: list[Any] = []
        out: list[dict[str, Any]] = []
        for conv, seed in zip(conversations, seeds):
            prompt_ids = render_prompt(tokenizer, conv, add_generation_prompt=True)
            try:
                handles.append((engine.submit(GenerationRequest(
                    prompt_ids=prompt_ids, adapter=target.adapter, max_tokens=params.max_completion_tokens,
                    temperature=params.temperature, top_p=params.top_p, seed=seed)), len(prompt_ids)))
            except ServeError as e:
                handles.append((None, {"code": getattr(e, "code", "server_error"), "message": str(e)}))
        for handle, info in handles:
            if handle is None:
                out.append({"output_text": "", "finish_reason": "error", "error": info,
                            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                      "cached_tokens": 0}})
                continue
            r = handle.result()
            completion = r.usage.completion_tokens if r.usage else len(r.token_ids)
            out.append({"output_text": r.text, "finish_reason": r.finish_reason or "stop",
                        "error": {"code": "engine_error", "message": r.error} if r.error else None,
                        "usage": {"prompt_tokens": info, "completion_tokens": completion,
                                  "total_tokens": info + completion, "cached_tokens": 0}})
        return out

    def _reward_model(self, model_id: str):
        from ml.rl.reward_model import load_reward_model

        with self._lock:
            if model_id in self._rewards:
                self._rewards.move_to_end(model_id)
                return self._rewards[model_id]
        with session_scope() as s:
            row = s.get(Model, model_id)
            if row is None or not is_reward_model(row):
                raise EvalSpecError(f"{model_id!r} is not a reward model", "testing_criteria.model")
            path = str(model_dir(self.storage, row))
        loaded = load_reward_model(path)
        with self._lock:
            self._rewards[model_id] = loaded
            while len(self._rewards) > REWARD_CACHE:
                self._rewards.popitem(last=False)
        return loaded

    def reward_scores(self, model_id: str, conversations: list[list[dict]]) -> list[float]:
        from ml.rl.reward_model import score

        model, tokenizer = self._reward_model(model_id)
        return score(model, tokenizer, conversations)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


_sampler: EvalSampler | None = None


def get_sampler(settings: Settings, storage: Storage) -> EvalSampler:
    """One sampler per worker process, so engines stay loaded between runs."""
    global _sampler
    if _sampler is None:
        _sampler = EvalSampler(settings, storage)
    return _sampler
