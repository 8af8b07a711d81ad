"""Several base models behind one front door: base-model id -> Engine, created on first use.

Owns engine lifetimes (lazy creation, one load per id even under concurrent first requests, close) and
routing an adapter folder to the engine of the base it was trained on. It does not decide where model
ids live on disk: the caller passes `resolve` (id -> folder), e.g. a registry lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.serve.engine import Engine, EngineStats
from ml.serve.lora import adapter_base_model
from ml.serve.request import UnsupportedAdapter


class EnginePool:
    def __init__(self, resolve: Callable[[str], str | Path] | None = None, **engine_kwargs: Any) -> None:
        """engine_kwargs are passed to every Engine (dtype, max_batch_size, ...)."""
        self._resolve = resolve or (lambda model_id: model_id)
        self._kwargs = engine_kwargs
        self._engines: dict[str, Engine] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, base_model: str) -> Engine:
        """The engine serving `base_model`, loading it (seconds) the first time. Blocking: call it
        from a worker thread, not inside an event loop."""
        with self._lock:
            eng = self._engines.get(base_model)
            if eng is not None:
                return eng
            gate = self._loading.setdefault(base_model, threading.Lock())
        with gate:
            with self._lock:
                eng = self._engines.get(base_model)
            if eng is None:
                eng = Engine(self._resolve(base_model), model_id=base_model, **self._kwargs)
                with self._lock:
                    self._engines[base_model] = eng
            return eng

    def add_adapter(self, name: str, adapter_dir: str | Path, base_model: str | None = None) -> Engine:
        """Register adapter `name` with the engine of its base model (read from the folder when not
        given) and return that engine."""
        base = base_model or adapter_base_model(adapter_dir)
        if not base:
            raise UnsupportedAdapter(f"{adapter_dir}: cannot tell which base model the adapter belongs to")
        eng = self.get(base)
        eng.register_adapter(name, adapter_dir)
        return eng

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._engines)

    def stats(self) -> dict[str, EngineStats]:
        with self._lock:
            engines = dict(self._engines)
        return {k: e.stats() for k, e in engines.items()}

    def remove(self, base_model: str) -> None:
        with self._lock:
            eng = self._engines.pop(base_model, None)
        if eng is not None:
            eng.close()

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for e in engines:
            e.close()
