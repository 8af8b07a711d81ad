"""Adapter lifecycle: LRU cache, unload, refusing adapters that cannot be batched, base-model routing."""

from __future__ import annotations

import json
import shutil

import pytest

from ml.serve import EnginePool, GenerationRequest, UnknownAdapter, UnsupportedAdapter, adapter_base_model


def greedy(prompt, adapter, n=12) -> GenerationRequest:
    return GenerationRequest(prompt, adapter=adapter, max_tokens=n, temperature=0)


def test_lru_cache_of_one_still_serves_both(make_engine, reference, prompts):
    eng = make_engine(adapter_cache_size=1)
    for a in ("alpha", "beta", "alpha"):
        assert eng.generate(greedy(prompts[0], a)).token_ids == reference.greedy(prompts[0], 12, a)
        assert eng.stats().loaded_adapters == [a]
    # concurrent requests for two adapters: the second waits until the first's adapter is free
    hs = [eng.submit(greedy(prompts[1], a)) for a in ("alpha", "beta", "alpha")]
    for h, a in zip(hs, ("alpha", "beta", "alpha")):
        assert h.result(timeout=120).token_ids == reference.greedy(prompts[1], 12, a)


def test_request_waiting_for_an_adapter_does_not_block_others(make_engine, reference, prompts):
    eng = make_engine(adapter_cache_size=1, max_batch_size=2, start=False)
    alpha = eng.submit(greedy(prompts[1], "alpha", n=60))
    beta = eng.submit(greedy(prompts[0], "beta"))  # alpha holds the only adapter slot
    base = eng.submit(greedy(prompts[2], None, n=5))
    eng.start()
    assert base.result(timeout=60).token_ids == reference.greedy(prompts[2], 5)
    assert not alpha.done and not beta.done
    assert alpha.result(timeout=60).token_ids == reference.greedy(prompts[1], 60, "alpha")
    assert beta.result(timeout=60).token_ids == reference.greedy(prompts[0], 12, "beta")


def test_unload_adapter(make_engine, prompts):
    eng = make_engine()
    eng.generate(greedy(prompts[0], "beta"))
    assert "beta" in eng.stats().loaded_adapters
    eng.unload_adapter("beta")
    assert "beta" not in eng.stats().loaded_adapters
    with pytest.raises(UnknownAdapter):
        eng.submit(greedy(prompts[0], "beta"))


def test_re_registering_a_name_serves_the_new_weights(make_engine, reference, adapter_dirs, prompts):
    eng = make_engine()
    eng.generate(greedy(prompts[0], "alpha"))
    eng.register_adapter("alpha", adapter_dirs["beta"])
    assert eng.generate(greedy(prompts[0], "alpha")).token_ids == reference.greedy(prompts[0], 12, "beta")


def test_unsupported_adapters_are_refused(make_engine, adapter_dirs, tmp_path):
    eng = make_engine()
    dora = tmp_path / "dora"
    shutil.copytree(adapter_dirs["alpha"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(UnsupportedAdapter, match="use_dora"):
        eng.register_adapter("dora", dora)
    with pytest.raises(UnsupportedAdapter):
        eng.register_adapter("empty", tmp_path)


def test_adapter_for_another_base_fails_its_request(make_engine, adapter_dirs, tmp_path, prompts):
    """Shapes are checked when weights load; the request ends with an error, the engine lives on."""
    from safetensors.torch import load_file, save_file

    wrong = tmp_path / "wrong"
    shutil.copytree(adapter_dirs["alpha"], wrong)
    sd = load_file(str(wrong / "adapter_model.safetensors"))
    sd = {k: (v[:, :-1].contiguous() if k.endswith("lora_A.weight") else v) for k, v in sd.items()}
    save_file(sd, str(wrong / "adapter_model.safetensors"))
    eng = make_engine()
    eng.register_adapter("wrong", wrong)
    out = eng.submit(greedy(prompts[0], "wrong")).result(timeout=60)
    assert out.finish_reason == "error" and "base" in out.error
    assert eng.generate(greedy(prompts[0], "alpha")).finish_reason in ("length", "stop")


def test_adapter_base_model_prefers_chatforge_json(adapter_dirs, lively_model_path, tmp_path):
    assert adapter_base_model(adapter_dirs["alpha"]) == str(lively_model_path)
    d = tmp_path / "a"
    shutil.copytree(adapter_dirs["alpha"], d)
    (d / "chatforge.json").write_text(json.dumps({"base_model": "smollm2-135m"}))
    assert adapter_base_model(d) == "smollm2-135m"


def test_pool_routes_adapters_to_their_base(adapter_dirs, lively_model_path, reference, prompts):
    pool = EnginePool(resolve=lambda model_id: {"lively": lively_model_path}[model_id], max_total_tokens=256)
    try:
        eng = pool.add_adapter("alpha", adapter_dirs["alpha"], base_model="lively")
        assert pool.get("lively") is eng and pool.loaded() == ["lively"]
        assert eng.generate(greedy(prompts[0], "alpha")).token_ids == reference.greedy(
            prompts[0], 12, "alpha"
        )
        assert pool.stats()["lively"].requests_finished_total == 1
    finally:
        pool.close()
