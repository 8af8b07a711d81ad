import pytest
import torch

from tests.support.models import CACHE

from .toys import HELD_OUT_TOPICS, build_yes_no_policy, polite_pairs, write_pairs, write_prompts


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def yes_no_policy_path(tiny_model_path):
    """The tiny model taught to answer with yes/no/YES/NO words (built once, cached with the test models)."""
    return build_yes_no_policy(tiny_model_path, CACHE / f"rl-yes-no-{tiny_model_path.name}")


@pytest.fixture(scope="session")
def preference_files(tmp_path_factory):
    """train (64 pairs), valid (16) and held_out (16 pairs about topics never seen in training)."""
    d = tmp_path_factory.mktemp("prefs")
    return {
        "train": write_pairs(d / "train.jsonl", polite_pairs(64, seed=1)),
        "valid": write_pairs(d / "valid.jsonl", polite_pairs(16, seed=2)),
        "held_out": write_pairs(d / "held_out.jsonl", polite_pairs(16, seed=3, topics=HELD_OUT_TOPICS)),
    }


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", 32)
