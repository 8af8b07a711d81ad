"""POST /v1/rewards against a real server with a trained reward model: the scores are exactly what the
saved folder gives when loaded with transformers directly (one conversation at a time, no padding),
and the model ranks chosen replies above rejected ones on pairs it never saw."""

from __future__ import annotations

import uuid

import httpx2 as httpx
import pytest
import torch

from ml.config import LoraSettings
from ml.events import PrintSink
from ml.records import read_canonical
from ml.rl.config import RewardModelConfig
from ml.rl.reward import run_reward_model
from ml.rl.reward_model import reward_input_ids
from tests.ml.rl.toys import HELD_OUT_TOPICS, polite_pairs, write_pairs


@pytest.fixture(scope="module")
def reward_model(service, tiny_model_path, tmp_path_factory) -> tuple[str, object]:
    """A reward model trained on polite-vs-rude pairs (as tests/ml/rl trains it), registered for
    project-a the way the worker records one: returns (model id, folder)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from chatforge.db.models import Model, Project

    d = tmp_path_factory.mktemp("rm")
    cfg = RewardModelConfig(n_epochs=3, learning_rate=1e-3, batch_size=8, micro_batch_size=8,
                            lora=LoraSettings(r=8, alpha=16, dropout=0.0))
    res = run_reward_model(cfg, tiny_model_path, write_pairs(d / "train.jsonl", polite_pairs(64, seed=1)), None,
                           d / "out", PrintSink(verbose=False), resume=False)
    assert res.status == "succeeded"
    model_id = f"ft:tiny-llama:rm:{uuid.uuid4().hex[:8]}"
    db = create_engine(service.env["CHATFORGE_DATABASE_URL"])
    with Session(db) as s:
        project = s.scalar(select(Project).where(Project.name == "project-a"))
        s.add(Model(id=model_id, project_id=project.id, kind="reward_model", parent="tiny-llama", root="tiny-llama",
                    storage_key=f"test/{model_id}", source=str(res.model_dir), settings={"linked": True}))
        s.commit()
    db.dispose()
    return model_id, res.model_dir


def _direct_scores(folder, conversations) -> list[float]:
    """The folder through plain transformers, each conversation alone (no batching, no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return [float(model(torch.tensor([reward_input_ids(tok, conv)])).logits[0, 0]) for conv in conversations]


def test_rewards_equal_the_model_and_rank_chosen_first(service, key_a, key_b, reward_model, tmp_path):
    model_id, folder = reward_model
    pairs = list(read_canonical(write_pairs(tmp_path / "held.jsonl",
                                            polite_pairs(16, seed=3, topics=HELD_OUT_TOPICS)), "preference"))
    conversations = [[m.to_dict() for m in (*p.prompt, reply)] for p in pairs for reply in (p.chosen, p.rejected)]
    r = httpx.post(service.v1 + "/rewards", headers={"Authorization": f"Bearer {key_a}"}, timeout=300,
                   json={"model": model_id, "items": [{"messages": c} for c in conversations]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model_id and [d["index"] for d in body["data"]] == list(range(len(conversations)))
    scores = [d["score"] for d in body["data"]]
    assert scores == pytest.approx(_direct_scores(folder, conversations), abs=1e-4)
    chosen, rejected = scores[0::2], scores[1::2]
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(pairs) >= 0.9
    # another project cannot see it; a chat model is not a reward model
    other = httpx.post(service.v1 + "/rewards", headers={"Authorization": f"Bearer {key_b}"}, timeout=60,
                       json={"model": model_id, "items": [{"messages": conversations[0]}]})
    assert other.status_code == 404
    chat = httpx.post(service.v1 + "/rewards", headers={"Authorization": f"Bearer {key_a}"}, timeout=60,
                      json={"model": "tiny-llama", "items": [{"messages": conversations[0]}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "not_a_reward_model"
