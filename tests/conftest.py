import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.support.models import smollm2_dir, tiny_llama_dir  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_path():
    return smollm2_dir()


@pytest.fixture(scope="session")
def tiny_model_path():
    return tiny_llama_dir()
