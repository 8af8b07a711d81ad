"""CUDA-only paths, skipped on CPU machines (tests/conftest.py skips `gpu` marks without CUDA).

The CPU suite covers the same code: QLoRA through bitsandbytes' CPU backend (tests/api/test_job_variants.py),
DeepSpeed ZeRO-3 with offload on gloo (same file), and mixed-adapter batches (tests/ml/serve).
"""

import pytest
import torch

from ml.config import SupervisedConfig
from ml.events import PrintSink
from ml.records import Conversation, Message, write_canonical
from ml.train.sft import run_supervised

pytestmark = pytest.mark.gpu


def _data(tmp_path):
    rows = [Conversation(messages=(Message("user", f"{i}+{i}?"), Message("assistant", f"{2 * i}"))) for i in range(16)]
    write_canonical(tmp_path / "t.jsonl", rows)
    return tmp_path / "t.jsonl"


@pytest.mark.parametrize("bits", [8, 4])
def test_qlora_on_cuda(tmp_path, tiny_model_path, bits):
    cfg = SupervisedConfig.from_dict({"adapter": "qlora", "quant": {"bits": bits}, "max_steps": 3,
                                      "batch_size": 4, "max_seq_length": 64})
    res = run_supervised(cfg, tiny_model_path, _data(tmp_path), None, tmp_path / "out", PrintSink(False))
    assert res.status == "succeeded" and (res.model_dir / "adapter_config.json").exists()
    assert torch.cuda.max_memory_allocated() > 0


def test_deepspeed_zero3_on_cuda(tmp_path, tiny_model_path):
    cfg = SupervisedConfig.from_dict({"adapter": "full", "deepspeed": {"stage": 3, "offload": False},
                                      "max_steps": 2, "batch_size": 4, "max_seq_length": 64})
    res = run_supervised(cfg, tiny_model_path, _data(tmp_path), None, tmp_path / "out", PrintSink(False))
    assert res.status == "succeeded" and list(res.model_dir.glob("*.safetensors"))
