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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("variant", [{"adapter": "qlora", "quant": {"bits": 4}}, {"adapter": "lora"},
                                     {"adapter": "full", "deepspeed": {"stage": 2}}])
def test_two_ranks_on_two_gpus(tmp_path, tiny_model_path, variant):
    """The worker's multi-process path on NCCL (the CPU suite runs it on gloo: tests/api/test_multiprocess.py);
    QLoRA loads each rank's quantised copy on its own GPU (ml.train.trainable.rank_device_map)."""
    from workers.distributed import run_supervised_ranks

    cfg = SupervisedConfig.from_dict({**variant, "max_steps": 3, "batch_size": 4, "max_seq_length": 64})
    res = run_supervised_ranks(cfg, 2, tiny_model_path, _data(tmp_path), None, tmp_path / "out", PrintSink(False),
                               gpus=torch.cuda.device_count())
    assert res.status == "succeeded" and res.steps == 3 and res.model_dir.exists()
