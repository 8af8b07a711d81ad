"""From an OpenAI model id to an engine and adapter: base models get their own engine (loaded once per
API process), fine-tuned adapters and checkpoints ride on their base model's engine, full fine-tuned
models get an engine of their own. The engines live in ml.serve; this only routes to them."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from api.errors import BadRequest
from chatforge.db.models import Model
from chatforge.routing import Target, model_folder, serving_target
from chatforge.settings import Settings
from chatforge.storage import Storage

if TYPE_CHECKING:
    from ml.serve import EnginePool


@lru_cache(maxsize=64)
def _tokenizer(path: str):
    from ml.models import load_tokenizer

    return load_tokenizer(path)


def is_reward_model(row: Model) -> bool:
    """A trained reward model, or a checkpoint of one (recorded as settings["serves_as"] by the worker)."""
    return row.kind == "reward_model" or (row.settings or {}).get("serves_as") == "reward_model"


class ServingHub:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings, self.storage = settings, storage
        self._pools: dict[tuple[str, str], EnginePool] = {}  # (dtype, quantization) -> engines
        self._registered: dict[str, str] = {}  # adapter model id -> engine id
        self._lock = threading.Lock()

    def _pool(self, dtype: str, quantization: str):
        from ml.serve import EnginePool

        with self._lock:
            key = (dtype, quantization)
            if key not in self._pools:
                self._pools[key] = EnginePool(
                    resolve=self._folder, dtype=dtype, quantization=quantization,
                    max_batch_size=self.settings.serve_max_batch, max_queue=self.settings.serve_max_queue,
                    adapter_cache_size=self.settings.adapter_cache_size,
                    prefix_cache_mb=self.settings.serve_prefix_cache_mb)
            return self._pools[key]

    @property
    def pools(self) -> list:
        with self._lock:
            return list(self._pools.values())

    def stats(self) -> dict:
        out = {}
        for pool in self.pools:
            out.update(pool.stats())
        return out

    def _folder(self, model_id: str) -> Path:
        return model_folder(self.storage, model_id)

    def target(self, row: Model) -> Target:
        if is_reward_model(row):
            raise BadRequest(f"{row.id} is a reward model; score with POST /v1/rewards instead of chatting",
                             param="model", code="not_a_chat_model")
        return serving_target(row, self.settings, self.storage)

    def engine_for(self, target: Target):
        """Blocking (loads weights the first time): call from a thread."""
        engine = self._pool(target.dtype, target.quantization).get(target.engine_id)
        if target.adapter is not None:
            with self._lock:
                if self._registered.get(target.adapter) != target.engine_id:
                    engine.register_adapter(target.adapter, target.adapter_dir)
                    self._registered[target.adapter] = target.engine_id
        return engine

    def tokenizer_for(self, engine, target: Target):
        """The tokenizer and chat template the model was trained with: an adapter folder carries its own
        copy (saved by the trainer); base and full models use the engine's."""
        if target.adapter_dir is not None and (target.adapter_dir / "tokenizer_config.json").exists():
            return _tokenizer(str(target.adapter_dir))
        return engine.tokenizer

    def prompt_ids(self, engine, target: Target, messages: list[dict]) -> list[int]:
        """Chat prompt token ids, rendered by the same function training uses (ml.data.render)."""
        from ml.data.render import render_prompt

        return render_prompt(self.tokenizer_for(engine, target), messages, add_generation_prompt=True)

    def forget_model(self, model_id: str) -> None:
        """A deleted model: unload its adapter, or close its own engine."""
        with self._lock:
            engine_id = self._registered.pop(model_id, None)
        for pool in self.pools:
            if engine_id is not None and engine_id in pool.loaded():
                pool.get(engine_id).unload_adapter(model_id)
            if model_id in pool.loaded():
                pool.remove(model_id)

    def shutdown(self) -> None:
        for pool in self.pools:
            pool.close()
