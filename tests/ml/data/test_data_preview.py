"""preview(): canonical records rendered through the base model's chat template (ml.data.render), with
learned spans marked; preference prompt/chosen/rejected shown separately."""

from __future__ import annotations

from pathlib import Path

from ml.data import inspect_file, preview
from tests.support.data import SAMPLES

DATASETS = SAMPLES
VALID = Path(__file__).parents[2] / "fixtures" / "datasets" / "valid"


def canonical(tmp_path, path):
    out = tmp_path / "c.jsonl"
    report = inspect_file(path, out_path=out)
    assert report.ok
    return out, report.kind


def test_sft_preview_marks_assistant_turns_as_learned(tmp_path, tok):
    out, kind = canonical(tmp_path, DATASETS / "sharegpt_fastchat_dummy_conversation.json")
    items = preview(out, kind, tok, n=3)
    assert len(items) == 3
    segs = items[0]["segments"]
    learned = [s["text"] for s in segs if s["learned"]]
    assert learned == [
        "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).<|im_end|>",
        "You too!<|im_end|>",
    ]
    full = "".join(s["text"] for s in segs)
    assert "<|im_start|>user\nWho are you?<|im_end|>" in full
    assert items[0]["record"]["messages"][0] == {"role": "user", "content": "Who are you?"}
    assert items[0]["n_tokens"] > items[0]["n_learned"] > 0


def test_preference_preview_shows_prompt_and_each_reply(tmp_path, tok):
    out, kind = canonical(tmp_path, DATASETS / "pref_hh_rlhf_harmless_base_test_first500.jsonl")
    item = preview(out, kind, tok, n=1)[0]
    prompt = "".join(s["text"] for s in item["prompt"])
    assert prompt.endswith(
        "<|im_start|>user\nokay some of these do not have anything to do with pens<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.count("<|im_start|>user") == 3  # the whole history, not just the first turn
    chosen = [s for s in item["chosen"] if s["learned"]]
    assert chosen[0]["text"].startswith("No, sorry!") and chosen[0]["text"].endswith("<|im_end|>")
    assert item["rejected"][0]["text"].startswith("There are lots of funny things")
    assert item["chosen_tokens"] > 0 and item["rejected_tokens"] > 0


def test_prompts_preview_ends_with_generation_prompt(tmp_path, tok):
    out, kind = canonical(tmp_path, VALID / "openai_prompts.jsonl")
    item = preview(out, kind, tok, n=2)[1]
    assert [s["learned"] for s in item["segments"]] == [False]
    assert item["segments"][0]["text"].endswith("Poem about 1.<|im_end|>\n<|im_start|>assistant\n")


def test_preview_respects_max_length(tmp_path, tok):
    out, kind = canonical(tmp_path, DATASETS / "openai_chat_gsm8k_train.jsonl")
    item = preview(out, kind, tok, n=1, max_length=40)[0]
    assert item["truncated"] and item["n_tokens"] == 40
