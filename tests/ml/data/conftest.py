import pytest

from ml.models import load_tokenizer


@pytest.fixture(scope="session")
def tok(tiny_model_path):
    """The tiny test model's tokenizer (SmolLM2's, ChatML template), loaded once for this folder."""
    return load_tokenizer(tiny_model_path)
