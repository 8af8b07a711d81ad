"""From a model row to what serves it: which engine (a base model, or a full fine-tuned model), which
adapter on it, and with which dtype / quantization. Shared by the API's ServingHub and the worker's
eval sampler, so both route a model id the same way. Loads nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import object_session

from chatforge.basemodels import model_dir
from chatforge.db.models import Model
from chatforge.db.session import session_scope
from chatforge.settings import Settings
from chatforge.storage import Storage


class NotAChatModel(ValueError):
    """A reward model asked to chat."""


@dataclass(frozen=True)
class Target:
    engine_id: str  # which engine (a base model id, or a full fine-tuned model id)
    adapter: str | None  # adapter name registered with that engine (the model id), or None
    adapter_dir: Path | None
    dtype: str = "bfloat16"  # from the base model's registry entry
    quantization: str = "none"  # "none" | "8bit" | "4bit" (bitsandbytes), from the registry entry


def model_folder(storage: Storage, model_id: str) -> Path:
    """The local folder of a registered model (KeyError if there is none)."""
    with session_scope() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise KeyError(model_id)
        return Path(model_dir(storage, row))


def is_reward_model(row: Model) -> bool:
    """A trained reward model, or a checkpoint of one (settings["serves_as"])."""
    return row.kind == "reward_model" or (row.settings or {}).get("serves_as") == "reward_model"


def serving_target(row: Model, settings: Settings, storage: Storage) -> Target:
    if is_reward_model(row):
        raise NotAChatModel(f"{row.id} is a reward model; it scores replies and cannot generate them")
    # The row's own session when it has one: a request already holds that connection, and asking the
    # pool for a second one per request can exhaust it under load (each waiting request holds one).
    own = object_session(row)
    if own is not None:
        root = own.get(Model, row.root)
        opts = dict(root.settings if root is not None else {})
    else:
        with session_scope() as s:
            root = s.get(Model, row.root)
            opts = dict(root.settings if root is not None else {})
    dtype = opts.get("dtype") or settings.serve_dtype
    quant = opts.get("quantization") or "none"
    if row.kind == "base" or not row.is_adapter:
        return Target(row.id, None, None, dtype, quant)
    return Target(row.root, row.id, Path(model_dir(storage, row)), dtype, quant)
