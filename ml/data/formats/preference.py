"""Preference formats -> PreferenceExample(prompt messages, chosen reply, rejected reply).

OpenAI DPO, Anthropic hh-rlhf (full transcripts, multi-turn history kept), Dahoas rm-static,
{prompt, chosen, rejected} pairs (synthetic-instruct-gptj-pairwise, yitingxie, TRL), WebGPT
comparisons, Stanford SHP, GPT-4-LLM comparison data, LLaMA-Factory ShareGPT and ranked-Alpaca
preference files. A pair with an empty reply, identical replies, or a tie is skipped with a warning.
"""

from __future__ import annotations

from typing import Any

from ml.data.formats.chat import prompt_messages, sharegpt_messages, sharegpt_turn
from ml.data.formats.fields import (
    ConvertContext,
    RecordError,
    SkipRecord,
    get_dict,
    get_list,
    get_number,
    get_str,
    json_type,
)
from ml.data.formats.instruction import alpaca_prompt
from ml.data.formats.messages import (
    looks_like_transcript,
    parse_message,
    parse_messages,
    parse_tools,
    parse_transcript,
    split_transcript,
)
from ml.data.formats.spec import FormatSpec
from ml.records import Message, PreferenceExample, Record


def make_pair(
    prompt, chosen: Message, rejected: Message, chosen_key: str, rejected_key: str
) -> PreferenceExample:
    for m, key in ((chosen, chosen_key), (rejected, rejected_key)):
        if not m.content.strip() and not m.tool_calls:
            raise SkipRecord(key, f'the "{key}" reply is empty; record skipped')
    if chosen.content == rejected.content and chosen.tool_calls == rejected.tool_calls:
        raise SkipRecord(
            chosen_key,
            f'"{chosen_key}" and "{rejected_key}" are identical (nothing to prefer); record skipped',
        )
    return PreferenceExample(tuple(prompt), chosen, rejected)


def _reply(text: str) -> Message:
    return Message("assistant", text)


def text_prompt(prompt: str, p: str) -> list[Message]:
    """A prompt string: an hh-style transcript (possibly ending with "Assistant:") or one user turn."""
    if looks_like_transcript(prompt):
        if prompt.rstrip().endswith("Assistant:"):
            return split_transcript(prompt.rstrip(), p)[1]
        return list(prompt_messages(parse_transcript(prompt, p), p))
    if not prompt.strip():
        raise RecordError(p, f'"{p}" is empty')
    return [Message("user", prompt)]


def _completion(value: Any, p: str, ctx: ConvertContext, strip_space: bool) -> Message:
    """A reply given as text, as one assistant message, or as a one-message list (TRL style)."""
    if isinstance(value, str):
        return _reply(value[1:] if strip_space and value.startswith(" ") else value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
        p = f"{p}[0]"
    if isinstance(value, dict):
        m = parse_message(value, p, ctx)
        if m.role != "assistant":
            raise RecordError(f"{p}.role", f'{p} must be an assistant message, got role "{m.role}"')
        return m
    raise RecordError(p, f'"{p}" must be a string or one assistant message, got {json_type(value)}')


# -- converters ----------------------------------------------------------------------------------------


def convert_openai_dpo(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    inp = get_dict(r, "input")
    prompt = prompt_messages(
        parse_messages(get_list(inp, "messages", "input.messages"), "input.messages", ctx), "input.messages"
    )
    replies = []
    for key in ("preferred_output", "non_preferred_output"):
        value = get_list(r, key)
        if len(value) != 1:
            raise RecordError(
                key, f'"{key}" must be a list with exactly one assistant message, got {len(value)}'
            )
        replies.append(_completion(value, key, ctx, strip_space=False))
    return [make_pair(prompt, replies[0], replies[1], "preferred_output", "non_preferred_output")]


def convert_hh_rlhf(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    chosen, rejected = r.get("chosen"), r.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):  # TRL conversational, implicit prompt
        c = parse_messages(chosen, "chosen", ctx)
        j = parse_messages(rejected, "rejected", ctx)
        for msgs, key in ((c, "chosen"), (j, "rejected")):
            if msgs[-1].role != "assistant":
                raise RecordError(key, f'"{key}" must end with the assistant reply')
        if c[:-1] != j[:-1]:
            raise RecordError(
                None, "chosen and rejected must share the same conversation before the final reply"
            )
        return [make_pair(prompt_messages(c[:-1], "chosen"), c[-1], j[-1], "chosen", "rejected")]
    pc, prompt, reply_c = split_transcript(get_str(r, "chosen"), "chosen")
    pr, _, reply_r = split_transcript(get_str(r, "rejected"), "rejected")
    if pc != pr:
        raise RecordError(
            None,
            'chosen and rejected differ before the last "Assistant:" turn; both transcripts must repeat '
            "the same conversation and differ only in the final reply",
        )
    return [make_pair(prompt, _reply(reply_c), _reply(reply_r), "chosen", "rejected")]


def convert_rm_static(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    prompt = text_prompt(get_str(r, "prompt"), "prompt")
    chosen = _completion(get_str(r, "chosen"), "chosen", ctx, strip_space=True)
    rejected = _completion(get_str(r, "rejected"), "rejected", ctx, strip_space=True)
    return [make_pair(prompt, chosen, rejected, "chosen", "rejected")]


def convert_pairs(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    raw = r.get("prompt")
    if isinstance(raw, list):
        prompt = list(prompt_messages(parse_messages(raw, "prompt", ctx), "prompt"))
        transcript = False
    else:
        text = get_str(r, "prompt")
        prompt, transcript = text_prompt(text, "prompt"), looks_like_transcript(text)
    chosen = _completion(r.get("chosen"), "chosen", ctx, strip_space=transcript)
    rejected = _completion(r.get("rejected"), "rejected", ctx, strip_space=transcript)
    return [make_pair(prompt, chosen, rejected, "chosen", "rejected")]


def convert_webgpt(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    q = r.get("question")
    question = (
        get_str(q, "full_text", "question.full_text") if isinstance(q, dict) else get_str(r, "question")
    )
    if not question.strip():
        raise RecordError("question", "the question is empty")
    s0, s1 = get_number(r, "score_0"), get_number(r, "score_1")
    if s0 == s1:
        raise SkipRecord(
            "score_0", f"score_0 equals score_1 ({s0:g}): a tie has no preferred answer; record skipped"
        )
    a0, a1 = get_str(r, "answer_0"), get_str(r, "answer_1")
    best, worst, bk, wk = (a0, a1, "answer_0", "answer_1") if s0 > s1 else (a1, a0, "answer_1", "answer_0")
    return [make_pair([Message("user", question)], _reply(best), _reply(worst), bk, wk)]


def convert_shp(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    post = get_str(r, "history")
    if not post.strip():
        raise RecordError("history", '"history" (the post) is empty')
    label = get_number(r, "labels")
    if label not in (0, 1):
        raise RecordError(
            "labels", f'"labels" must be 1 (human_ref_A preferred) or 0 (B preferred), got {label:g}'
        )
    a, b = get_str(r, "human_ref_A"), get_str(r, "human_ref_B")
    best, worst, bk, wk = (
        (a, b, "human_ref_A", "human_ref_B") if label == 1 else (b, a, "human_ref_B", "human_ref_A")
    )
    return [make_pair([Message("user", post)], _reply(best), _reply(worst), bk, wk)]


def convert_gpt4llm(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    question = get_str(r, "user_input")
    if not question.strip():
        raise RecordError("user_input", '"user_input" is empty')
    a, b = get_str(r, "completion_a"), get_str(r, "completion_b")
    return [make_pair([Message("user", question)], _reply(a), _reply(b), "completion_a", "completion_b")]


def convert_gpt4llm_ranked(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    """GPT-4-LLM comparison_data_v2: the best- and worst-scored non-empty responses form one pair."""
    question = get_str(r, "user_input")
    if not question.strip():
        raise RecordError("user_input", '"user_input" is empty')
    scored = []
    for i, item in enumerate(get_list(r, "responses_and_scores")):
        p = f"responses_and_scores[{i}]"
        if not isinstance(item, dict):
            raise RecordError(p, f"{p} must be an object with response and score, got {json_type(item)}")
        text = get_str(item, "response", f"{p}.response")
        if text.strip():
            scored.append((get_number(item, "score"), i, text))
    if len(scored) < 2:
        raise SkipRecord("responses_and_scores", "fewer than two non-empty responses; record skipped")
    scored.sort(key=lambda t: (-t[0], t[1]))
    (hi, _, best), (lo, _, worst) = scored[0], scored[-1]
    if hi == lo:
        raise SkipRecord(
            "responses_and_scores", f"all responses share the score {hi:g} (a tie); record skipped"
        )
    return [
        make_pair(
            [Message("user", question)],
            _reply(best),
            _reply(worst),
            "responses_and_scores",
            "responses_and_scores",
        )
    ]


def convert_sharegpt_preference(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    prompt = prompt_messages(sharegpt_messages(r, ctx), "conversations")
    replies = []
    for key in ("chosen", "rejected"):
        m = sharegpt_turn(get_dict(r, key), key, ctx)
        if m.role != "assistant":
            raise RecordError(f"{key}.from", f'{key}.from must be "gpt" (the assistant reply)')
        replies.append(m)
    if parse_tools(r.get("tools")):
        ctx.warn("tools", "tools are ignored for preference examples")
    return [make_pair(prompt, replies[0], replies[1], "chosen", "rejected")]


def convert_alpaca_ranked(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    outputs = get_list(r, "output")
    if len(outputs) < 2 or not all(isinstance(o, str) for o in outputs[:2]):
        raise RecordError("output", '"output" must list at least two answers as strings, best first')
    return [make_pair(alpaca_prompt(r), _reply(outputs[0]), _reply(outputs[1]), "output[0]", "output[1]")]


def _str_or_list(*keys):
    return lambda r: all(isinstance(r.get(k), (str, list)) for k in keys)


SPECS = [
    FormatSpec(
        "openai_dpo",
        "preference",
        "openai_dpo",
        "OpenAI DPO JSONL: input.messages, preferred_output and non_preferred_output (one assistant message each).",
        frozenset({"input", "preferred_output", "non_preferred_output"}),
        convert_openai_dpo,
        {
            "input": {"messages": [{"role": "user", "content": "Hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Hello! How can I help?"}],
            "non_preferred_output": [{"role": "assistant", "content": "What."}],
        },
    ),
    FormatSpec(
        "hh_rlhf",
        "preference",
        "hh_rlhf",
        'Anthropic hh-rlhf: chosen and rejected full "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts; the '
        'prompt is everything up to the last "Assistant:", earlier turns kept as history. Also TRL\'s '
        "implicit-prompt form with message lists.",
        frozenset({"chosen", "rejected"}),
        convert_hh_rlhf,
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
        matches=_str_or_list("chosen", "rejected"),
    ),
    FormatSpec(
        "rm_static",
        "preference",
        "prompt_pairs",
        'Dahoas rm-static / full-hh-rlhf: prompt (an hh transcript ending with "Assistant:"), response, '
        "chosen and rejected completions.",
        frozenset({"prompt", "response", "chosen", "rejected"}),
        convert_rm_static,
        {
            "prompt": "\n\nHuman: Hi\n\nAssistant:",
            "response": " Hello!",
            "chosen": " Hello!",
            "rejected": " Go away.",
        },
    ),
    FormatSpec(
        "prompt_chosen_rejected",
        "preference",
        "prompt_pairs",
        "prompt, chosen, rejected (synthetic-instruct-gptj-pairwise, yitingxie/rlhf-reward-datasets, TRL "
        "preference): strings, or message lists in TRL's conversational form.",
        frozenset({"prompt", "chosen", "rejected"}),
        convert_pairs,
        {"prompt": "Name a primary color.", "chosen": "Red.", "rejected": "Banana."},
    ),
    FormatSpec(
        "webgpt",
        "preference",
        "webgpt",
        "openai/webgpt_comparisons: question.full_text, answer_0/answer_1 with score_0/score_1; the higher "
        "score is chosen, ties are skipped.",
        frozenset({"question", "answer_0", "answer_1", "score_0", "score_1"}),
        convert_webgpt,
        {
            "question": {"full_text": "Why is the sky blue?"},
            "answer_0": "Scattering.",
            "answer_1": "Paint.",
            "score_0": 1.0,
            "score_1": -1.0,
        },
        optional=frozenset({"quotes_0", "quotes_1", "tokens_0", "tokens_1"}),
    ),
    FormatSpec(
        "shp",
        "preference",
        "shp",
        "stanfordnlp/SHP: history (the post), human_ref_A, human_ref_B, labels (1 = A preferred, 0 = B).",
        frozenset({"history", "human_ref_A", "human_ref_B", "labels"}),
        convert_shp,
        {
            "history": "How do plants eat?",
            "human_ref_A": "Photosynthesis.",
            "human_ref_B": "Spoons.",
            "labels": 1,
        },
        optional=frozenset(
            {
                "post_id",
                "domain",
                "upvote_ratio",
                "c_root_id_A",
                "c_root_id_B",
                "created_at_utc_A",
                "created_at_utc_B",
                "score_A",
                "score_B",
                "seconds_difference",
                "score_ratio",
            }
        ),
    ),
    FormatSpec(
        "gpt4llm_comparison",
        "preference",
        "gpt4llm",
        "GPT-4-LLM comparison_data: user_input, completion_a (ranked higher), completion_b.",
        frozenset({"user_input", "completion_a", "completion_b"}),
        convert_gpt4llm,
        {"user_input": "Name a planet.", "completion_a": "Mars.", "completion_b": "The Sun."},
    ),
    FormatSpec(
        "gpt4llm_ranked",
        "preference",
        "gpt4llm",
        "GPT-4-LLM comparison_data_v2: user_input and responses_and_scores [{response, score}]; the best- "
        "and worst-scored responses form one pair.",
        frozenset({"user_input", "responses_and_scores"}),
        convert_gpt4llm_ranked,
        {
            "user_input": "Name a planet.",
            "responses_and_scores": [
                {"response": "Mars.", "score": 9.0, "source": "gpt4"},
                {"response": "The Sun.", "score": 2.0, "source": "opt"},
            ],
        },
    ),
    FormatSpec(
        "sharegpt_preference",
        "preference",
        "sharegpt_preference",
        "LLaMA-Factory ShareGPT preference: conversations (the prompt), chosen and rejected {from, value}.",
        frozenset({"conversations", "chosen", "rejected"}),
        convert_sharegpt_preference,
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello!"},
            "rejected": {"from": "gpt", "value": "Go away."},
        },
        optional=frozenset({"system", "tools"}),
    ),
    FormatSpec(
        "alpaca_ranked",
        "preference",
        "alpaca_ranked",
        "LLaMA-Factory ranked Alpaca (e.g. comparison_gpt4_data): instruction, input, output = [best, worse].",
        frozenset({"instruction", "output"}),
        convert_alpaca_ranked,
        {"instruction": "Name a planet.", "input": "", "output": ["Mars.", "The Sun."]},
        matches=lambda r: isinstance(r.get("output"), list),
        optional=frozenset({"input", "system", "history"}),
    ),
]
