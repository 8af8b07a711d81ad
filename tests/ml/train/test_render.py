"""ml.data.render: learned spans, weights, train/serve prefix parity, preferences (SmolLM2 ChatML template).

Lives under tests/ml/train because the train engineer owns render.py; tests/ml/data belongs to the
data engineer.
"""

from __future__ import annotations

import pytest

from ml.data.render import IGNORE_INDEX, render_conversation, render_preference, render_prompt
from ml.models import load_tokenizer
from ml.records import Conversation, Message, PreferenceExample


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def conv(*pairs, weights=None):
    msgs = []
    for i, (role, content) in enumerate(pairs):
        w = (weights or {}).get(i)
        msgs.append(Message(role, content, weight=w))
    return Conversation(tuple(msgs))


def learned_text(tok, ex) -> list[str]:
    """Decode each maximal run of learned tokens."""
    runs, cur = [], []
    for t, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_learned_spans_are_assistant_content_plus_end_token(tok):
    c = conv(("user", "What is 2+2?"), ("assistant", "It is 4."), ("user", "And 3+3?"), ("assistant", "6"))
    ex = render_conversation(tok, c)
    assert learned_text(tok, ex) == ["It is 4.<|im_end|>", "6<|im_end|>"]
    assert len(ex.input_ids) == len(ex.labels)
    # The whole render equals the template's own tokenisation of the text.
    full = tok.apply_chat_template([m.to_dict() for m in c.messages], tokenize=False)
    assert "".join(s for s, _ in ex.segments) == full
    assert [s for s, learned in ex.segments if learned] == ["It is 4.<|im_end|>", "6<|im_end|>"]
    # SmolLM2 injects its default system prompt; it is context, not learned.
    assert "You are a helpful AI assistant named SmolLM" in ex.segments[0][0]
    assert ex.segments[0][1] is False
    # The end-of-turn token is the model's eos, so it learns to stop.
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    learned_ids = [t for t in ex.labels if t != IGNORE_INDEX]
    assert learned_ids.count(eos) == 2


def test_weight_zero_turn_is_context(tok):
    c = conv(
        ("system", "Be brief."),
        ("user", "hi"),
        ("assistant", "bad old reply"),
        ("user", "again"),
        ("assistant", "good"),
        weights={2: 0.0},
    )
    ex = render_conversation(tok, c)
    assert learned_text(tok, ex) == ["good<|im_end|>"]
    assert ("bad old reply<|im_end|>", False) in ex.segments
    assert ex.n_learned == len(tok("good<|im_end|>", add_special_tokens=False)["input_ids"])


def test_serving_prompt_is_token_prefix_of_training_render(tok):
    c = conv(
        ("system", "You answer in French."),
        ("user", "Hello!\nHow are you?"),
        ("assistant", "  Bien, merci."),
        ("user", "x"),
        ("assistant", "Très bien: 1 2 3\n\nfin"),
    )
    ex = render_conversation(tok, c)
    for cut in (2, 4):  # before each assistant turn
        prompt = render_prompt(tok, c.messages[:cut])
        assert ex.input_ids[: len(prompt)] == prompt
        # What follows the prompt is exactly the learned reply.
        assert ex.labels[len(prompt)] != IGNORE_INDEX
        assert ex.labels[len(prompt) - 1] == IGNORE_INDEX
    # OpenAI-style dicts render identically to canonical Messages.
    dicts = [{"role": m.role, "content": m.content} for m in c.messages[:4]]
    assert render_prompt(tok, dicts) == render_prompt(tok, c.messages[:4])
    assert tok.decode(render_prompt(tok, dicts)).endswith("<|im_start|>assistant\n")


def test_truncation(tok):
    c = conv(("user", "word " * 50), ("assistant", "answer " * 50))
    full = render_conversation(tok, c)
    ex = render_conversation(tok, c, max_length=80)
    assert ex.truncated and not full.truncated
    assert ex.input_ids == full.input_ids[:80] and ex.labels == full.labels[:80]
    assert sum(len(tok(s, add_special_tokens=False)["input_ids"]) for s, _ in ex.segments) == 80


def test_preference(tok):
    ex = PreferenceExample(
        prompt=(Message("user", "Name a colour."),),
        chosen=Message("assistant", "Blue."),
        rejected=Message("assistant", "I refuse."),
    )
    p, ch, rj = render_preference(tok, ex)
    assert p == render_prompt(tok, ex.prompt)
    assert tok.decode(ch) == "Blue.<|im_end|>"
    assert tok.decode(rj) == "I refuse.<|im_end|>"
    p2, ch2, rj2 = render_preference(tok, ex, max_length=20)
    assert len(p2) + max(len(ch2), len(rj2)) <= 20
    assert p2 == p[len(p) - len(p2) :]


def test_template_without_markers_uses_search_fallback(tok):
    # A template whose prefixes are not prefixes of the full render (it puts a marker on the LAST
    # assistant turn only) still yields the right learned spans.
    template = (
        "{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}[final]{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    import copy

    t2 = copy.deepcopy(tok)
    t2.chat_template = template
    t2.eos_token = "</s>"
    c = conv(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"))
    ex = render_conversation(t2, c)
    assert [s for s, learned in ex.segments if learned] == ["a1</s>", "a2</s>"]
