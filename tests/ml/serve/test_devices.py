"""Every tensor the engine makes follows the model's device.

On a CPU-only machine the model can only live on the CPU, so the test moves everything else away: the
engine thread's default device is switched to `meta` right after the model is loaded. A tensor created
without naming the model's device (KV cache, token ids, positions, rotary tables, LoRA stacks,
penalty counts, sampling generators) then lands on `meta`, and a dispatch-level log of every op's
tensors and generators catches it (mixing it with CPU tensors would also break the output). The same
requests must still produce the plain engine's tokens. tests/gpu covers a real CUDA device.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ml.serve import Engine, GenerationRequest


class DeviceLog(TorchDispatchMode):
    """Counts (op, device) for every tensor and generator an op reads or returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for x in tree_flatten((args, kwargs, out))[0]:
            if isinstance(x, (torch.Tensor, torch.Generator)):
                self.seen[(str(func), x.device.type)] += 1
        return out

    def devices(self) -> set[str]:
        return {d for _, d in self.seen}

    def ops_on(self, device: str) -> list[str]:
        return sorted({op for op, d in self.seen if d == device})


class ForeignDefaultEngine(Engine):
    """An engine whose scheduler thread creates tensors on `meta` unless told a device."""

    def _load_model(self, dtype, quantization):
        model = super()._load_model(dtype, quantization)
        self.device_log = DeviceLog()
        # Entered on the engine's own thread and left in place for its lifetime: both modes are
        # thread-local, so the test's thread (and other engines) are unaffected.
        torch.device("meta").__enter__()
        self.device_log.__enter__()
        return model


def _requests(prompts: list[list[int]]) -> list[GenerationRequest]:
    long_prompt = (prompts[1] * 4)[:200]
    return [
        GenerationRequest(prompts[0], max_tokens=12, temperature=0),
        GenerationRequest(prompts[1], adapter="alpha", max_tokens=12, temperature=0),
        GenerationRequest(prompts[2], adapter="beta", max_tokens=12, temperature=0.8, top_p=0.9, seed=7),
        GenerationRequest(
            prompts[3], max_tokens=12, temperature=0.7, seed=3, presence_penalty=0.5, frequency_penalty=0.5
        ),
        GenerationRequest(prompts[0], max_tokens=6, temperature=0, logprobs=True, top_logprobs=3),
        # chunked prefill (chunk 64) and a KV cache that grows past its first 256 positions
        GenerationRequest(long_prompt, adapter="alpha", max_tokens=80, temperature=0, stop_token_ids=[]),
    ]


def _run(engine: Engine, reqs: list[GenerationRequest]):
    handles = [engine.submit(r) for r in reqs]
    engine.start()
    return [h.result(timeout=300) for h in handles]


def test_every_engine_tensor_follows_the_model_device(lively_model_path, adapter_dirs, prompts):
    kwargs = {"max_total_tokens": 512, "prefill_chunk": 64, "device": "cpu", "start": False}
    plain = Engine(lively_model_path, **kwargs)
    probed = ForeignDefaultEngine(lively_model_path, **kwargs)
    try:
        for eng in (plain, probed):
            for name, d in adapter_dirs.items():
                eng.register_adapter(name, d)
        want = _run(plain, _requests(prompts))
        got = _run(probed, _requests(prompts))
    finally:
        plain.close()
        probed.close()

    log = probed.device_log
    assert probed.device == torch.device("cpu") == probed.model.device
    assert log.ops_on("meta") == []
    assert log.devices() == {"cpu"}
    # the log really saw the step's ops, not an idle thread
    ops = {op for op, _ in log.seen}
    expected = {"aten.index_put_.default", "aten.rand.generator", "aten.embedding.default"}
    assert expected <= ops, (expected - ops, sorted(ops))
    for w, g in zip(want, got):
        assert g.error is None and g.finish_reason == w.finish_reason
        assert g.token_ids == w.token_ids
    assert got[4].logprobs and len(got[4].logprobs[0].top) == 3
    assert probed.cache.capacity > 256  # the growth path ran under the log
