"""Tokenizers of registered models, loaded once per process (only tokenizer files are read)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session

from chatforge.basemodels import model_dir
from chatforge.db.models import Model
from chatforge.settings import get_settings
from chatforge.storage import Storage


@lru_cache(maxsize=8)
def _load(path: str):
    from ml.models import load_tokenizer

    return load_tokenizer(path)


def tokenizer_for(session: Session, storage: Storage, model_id: str | None = None):
    """The tokenizer of `model_id` (default: the default base model), or None if it is not installed."""
    row = session.get(Model, model_id or get_settings().default_base_model)
    if row is None:
        return None
    path = Path(model_dir(storage, row))
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        return None
    return _load(str(path))
