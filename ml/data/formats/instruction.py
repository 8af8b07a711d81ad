"""Single-turn instruction formats: Alpaca family (tatsu, cleaned, BELLE, GPTeacher), gpt4all, HC3 and
FLAN chain-of-thought TSV.

ONE Alpaca rendering: user = instruction, plus "\\n\\n" + input when input is non-empty; assistant =
output. No "### Instruction:" prompt template: the base model's chat template is the only template.
Records whose only target is empty or the "<nooutput>" placeholder are skipped with a warning.
"""

from __future__ import annotations

from typing import Any

from ml.data.formats.fields import ConvertContext, RecordError, SkipRecord, get_list, get_str, json_type
from ml.data.formats.spec import FormatSpec
from ml.records import Conversation, Message, Record


def alpaca_user_text(instruction: str, inp: str) -> str:
    return instruction + "\n\n" + inp if inp.strip() else instruction


def _history(r: dict[str, Any]) -> list[Message]:
    if r.get("history") is None:
        return []
    turns = get_list(r, "history")
    msgs = []
    for i, pair in enumerate(turns):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(
                f"history[{i}]",
                f"history[{i}] must be a [question, answer] pair of strings, got {json_type(pair)}",
            )
        msgs += [Message("user", pair[0]), Message("assistant", pair[1])]
    return msgs


def target_text(r: dict[str, Any], key: str) -> str:
    out = get_str(r, key)
    if out.strip().lower().startswith("<nooutput>"):
        raise SkipRecord(
            key, f'"{key}" is the "<nooutput>" placeholder (no answer was written); record skipped'
        )
    if not out.strip():
        raise SkipRecord(key, f'"{key}" is empty; record skipped')
    return out


def alpaca_prompt(r: dict[str, Any]) -> list[Message]:
    """System (optional) + history turns + the instruction/input user turn."""
    instruction = get_str(r, "instruction")
    inp = get_str(r, "input", required=False)
    if not instruction.strip() and not inp.strip():
        raise RecordError("instruction", '"instruction" is empty')
    msgs = []
    system = get_str(r, "system", required=False)
    if system.strip():
        msgs.append(Message("system", system))
    msgs += _history(r)
    msgs.append(Message("user", alpaca_user_text(instruction, inp) if instruction.strip() else inp))
    return msgs


def _alpaca_with(key: str):
    def convert(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
        prompt = alpaca_prompt(r)
        return [Conversation(tuple(prompt) + (Message("assistant", target_text(r, key)),))]

    return convert


def convert_gpt4all(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    prompt = get_str(r, "prompt")
    if not prompt.strip():
        raise RecordError("prompt", '"prompt" is empty')
    return [Conversation((Message("user", prompt), Message("assistant", target_text(r, "response"))))]


def convert_hc3(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    """One SFT example per non-empty answer: the human answers first, then ChatGPT's."""
    question = get_str(r, "question")
    if not question.strip():
        raise RecordError("question", '"question" is empty')
    out: list[Record] = []
    for key in ("human_answers", "chatgpt_answers"):
        for i, a in enumerate(get_list(r, key)):
            if not isinstance(a, str):
                raise RecordError(f"{key}[{i}]", f'"{key}[{i}]" must be a string, got {json_type(a)}')
            if a.strip():
                out.append(Conversation((Message("user", question), Message("assistant", a))))
    if not out:
        raise SkipRecord(None, "no non-empty answer in human_answers or chatgpt_answers; record skipped")
    return out


def convert_flan_cot(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    question, answer, rationale = get_str(r, "question"), get_str(r, "answer"), get_str(r, "rationale")
    if not question.strip():
        raise RecordError("question", '"question" is empty')
    if not answer.strip():
        raise RecordError("answer", '"answer" is empty')
    reply = f"So the answer is {answer.strip()}."
    if rationale.strip():
        reply = f"{rationale.strip()}\n{reply}"
    return [Conversation((Message("user", question), Message("assistant", reply)))]


FLAN_COLUMNS = ("question", "answer", "rationale")
_ALPACA_OPTIONAL = frozenset({"input", "system", "history", "text"})

SPECS = [
    FormatSpec(
        "alpaca",
        "sft",
        "alpaca",
        "Alpaca family (tatsu-lab, alpaca-cleaned, Chinese alpaca, BELLE JSONL): instruction, input "
        '(may be ""), output; optional system and history [[question, answer], ...].',
        frozenset({"instruction", "output"}),
        _alpaca_with("output"),
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        matches=lambda r: not isinstance(r.get("output"), list),
        optional=_ALPACA_OPTIONAL,
    ),
    FormatSpec(
        "gpteacher",
        "sft",
        "alpaca",
        "GPTeacher: Alpaca keys with the answer under response instead of output.",
        frozenset({"instruction", "response"}),
        _alpaca_with("response"),
        {"instruction": "Add the numbers.", "input": "2, 3", "response": "5"},
        optional=_ALPACA_OPTIONAL,
    ),
    FormatSpec(
        "gpt4all",
        "sft",
        "gpt4all",
        "gpt4all prompt generations: prompt and response (source is ignored).",
        frozenset({"prompt", "response"}),
        convert_gpt4all,
        {"prompt": "What is 2+2?", "response": "4", "source": "unified_chip2"},
        optional=frozenset({"source"}),
    ),
    FormatSpec(
        "hc3",
        "sft",
        "hc3",
        "HC3 (Human ChatGPT Comparison Corpus): question with human_answers and chatgpt_answers; each "
        "non-empty answer becomes its own example (human answers first).",
        frozenset({"question", "human_answers", "chatgpt_answers"}),
        convert_hc3,
        {
            "question": "Why is the sky blue?",
            "human_answers": ["Rayleigh scattering."],
            "chatgpt_answers": [],
        },
        optional=frozenset({"id", "source"}),
    ),
    FormatSpec(
        "flan_cot",
        "sft",
        "flan_cot",
        "FLAN v2 chain-of-thought TSV without header: question, answer, rationale; the reply is the "
        'rationale then "So the answer is <answer>.". Literal \\n in fields means a newline.',
        frozenset(FLAN_COLUMNS),
        convert_flan_cot,
        {"question": "What is 3*4?", "answer": "12", "rationale": "3 times 4 is 12."},
    ),
]
