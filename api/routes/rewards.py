"""POST /v1/rewards: score conversations with a trained reward model (one scalar per item).

Reward models are small sequence classifiers; each is loaded once per API process and kept (LRU).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ProjectDep, SessionDep
from api.errors import BadRequest
from api.services.models import visible_model
from api.services.serving import is_reward_model
from chatforge.basemodels import model_dir
from chatforge.db.models import Model
from chatforge.storage import get_storage

router = APIRouter(prefix="/v1", tags=["rewards"])
_cache: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()
CACHE_SIZE = 4


class Item(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=1)


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    items: list[Item] = Field(min_length=1, max_length=256)


def _load(model_id: str, path: str):
    from ml.rl.reward_model import load_reward_model

    with _lock:
        if model_id in _cache:
            _cache.move_to_end(model_id)
            return _cache[model_id]
        loaded = load_reward_model(path)
        _cache[model_id] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return loaded


def _score(model_id: str, path: str, conversations: list[list[dict]]) -> list[float]:
    from ml.rl.reward_model import score

    model, tokenizer = _load(model_id, path)
    with _lock:  # one forward pass at a time per process keeps memory bounded
        return score(model, tokenizer, conversations)


@router.post("/rewards")
async def rewards(body: RewardRequest, request: Request, session: SessionDep, project: ProjectDep) -> dict:
    def find() -> tuple[Model, str]:  # off the event loop: a database read, maybe a fetch from the object store
        try:
            found = visible_model(session, project, body.model)
            if not is_reward_model(found):  # a reward model or one of its checkpoints
                raise BadRequest(f"{body.model} is not a reward model (it is a {found.kind} model)", param="model",
                                 code="not_a_reward_model")
            return found, str(model_dir(get_storage(), found))
        finally:
            session.close()

    row, path = await asyncio.to_thread(find)
    for i, item in enumerate(body.items):
        last = item.messages[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise BadRequest(f"items[{i}].messages must end with an assistant message (the reply to score)",
                             param=f"items[{i}].messages")
    scores = await asyncio.to_thread(_score, row.id, path, [it.messages for it in body.items])
    return {"object": "list", "model": row.id,
            "data": [{"object": "reward", "index": i, "score": s} for i, s in enumerate(scores)]}
