"""Fast paths for the validation pass, each one checked against the slow, exact path it replaces.

- `decode_plain_chat`: an OpenAI chat line that is plainly valid (only role/content strings, no empty
  turn, ends with the assistant) is decoded and type-checked by msgspec in C. Anything else returns
  None and goes through the full converter, which words every problem; so reports never change.
- `encode`: the one canonical JSON writer (compact UTF-8) for both paths, so duplicates hash alike.
- `ChatMLRenderer`: renders ChatML-style chat templates with string joins instead of Jinja, built only
  when its output equals the Jinja render on probe conversations (and re-checked on real examples).
- `PieceCounter`: token counts for byte-level BPE tokenizers (GPT-2/SmolLM2/Qwen style) from a cache of
  per-pre-token counts; unseen pre-tokens go through the tokenizer's batched Rust encoder. BPE never
  merges across pre-tokens, so the sum is exact; it is also compared with the full encoder on a
  sample of real texts and switches itself off at the first difference.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

import msgspec

log = logging.getLogger(__name__)

encode = msgspec.json.Encoder().encode


class _Msg(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: str


class _Chat(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_Msg]


_decode_chat = msgspec.json.Decoder(_Chat).decode
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def decode_plain_chat(raw: bytes) -> _Chat | None:
    """The record when it needs no conversion and raises no problem at all; else None (slow path)."""
    try:
        rec = _decode_chat(raw)
    except _DECODE_ERRORS:
        return None
    msgs = rec.messages
    if not msgs or msgs[-1].role != "assistant":
        return None
    for m in msgs:
        if not m.content.strip():
            return None
    return rec


_PLAIN_ROLES = frozenset(("system", "user", "assistant"))


def plain_chat_from_dict(value: dict) -> _Chat | None:
    """decode_plain_chat for an already parsed record (JSON arrays, rows, lines orjson parsed).
    Keys must come in the canonical order (role, content) so the canonical bytes hash alike."""
    if len(value) != 1:
        return None
    msgs = value.get("messages")
    if type(msgs) is not list or not msgs:
        return None
    out = []
    for m in msgs:
        if type(m) is not dict or len(m) != 2:
            return None
        role, content = m.get("role"), m.get("content")
        if type(role) is not str or role not in _PLAIN_ROLES or type(content) is not str or not content.strip():
            return None
        if next(iter(m)) != "role":
            return None
        out.append(_Msg(role, content))
    if out[-1].role != "assistant":
        return None
    return _Chat(out)


_ALPACA_KEYS = (frozenset(("instruction", "input", "output")), frozenset(("instruction", "output")))


def plain_alpaca_from_dict(value: dict) -> _Chat | None:
    """An Alpaca record the converter would turn into one user/assistant pair without any problem:
    only instruction / input / output strings, a non-empty instruction, an output that is neither empty
    nor the "<nooutput>" placeholder. Anything else: None (the converter decides and words it)."""
    if len(value) > 3 or value.keys() not in _ALPACA_KEYS:
        return None
    instruction, inp, output = value["instruction"], value.get("input", ""), value["output"]
    if type(instruction) is not str or type(inp) is not str or type(output) is not str:
        return None
    stripped = output.strip()
    if not instruction.strip() or not stripped or stripped[:10].lower().startswith("<nooutput>"):
        return None
    user = instruction + "\n\n" + inp if inp.strip() else instruction
    return _Chat([_Msg("user", user), _Msg("assistant", output)])


# The formats with a fast path for parsed records, and the one for raw JSON Lines bytes.
PLAIN_FROM_DICT = {"openai_chat": plain_chat_from_dict, "alpaca": plain_alpaca_from_dict}
PLAIN_FROM_BYTES = {"openai_chat": decode_plain_chat}


# -- chat templates ------------------------------------------------------------------------------------

_PROBE_TEXTS = ("Hi", "  two\n\nlines  ", "{{ braces }} {% raw %}", "ünï 中文 🙂", "\n", "x" * 50)


def _probes() -> list[list[dict[str, str]]]:
    t = _PROBE_TEXTS
    return [
        [{"role": "user", "content": t[0]}, {"role": "assistant", "content": t[1]}],
        [{"role": "system", "content": t[2]}, {"role": "user", "content": t[3]},
         {"role": "assistant", "content": t[4]}],
        [{"role": "user", "content": t[5]}, {"role": "assistant", "content": t[0]},
         {"role": "user", "content": t[1]}, {"role": "assistant", "content": t[3]}],
        [{"role": "system", "content": t[0]}, {"role": "user", "content": t[4]}],
        [{"role": "user", "content": t[2]}],
        [{"role": "assistant", "content": t[3]}, {"role": "user", "content": t[5]}],
    ]


class ChatMLRenderer:
    """`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, an optional default system block when
    the first message is not a system one, and the template's generation prompt."""

    START, END = "<|im_start|>", "<|im_end|>\n"

    def __init__(self, default_system: str, generation_prompt: str):
        self.default_system, self.generation_prompt = default_system, generation_prompt

    def render(self, msgs, add_generation_prompt: bool = False) -> str:
        """msgs: objects with .role/.content, or (role, content) pairs via render_pairs."""
        start, end = self.START, self.END
        head = self.default_system if msgs[0].role != "system" else ""
        body = "".join([f"{start}{m.role}\n{m.content}{end}" for m in msgs])
        return head + body + (self.generation_prompt if add_generation_prompt else "")

    @classmethod
    def for_tokenizer(cls, tokenizer) -> ChatMLRenderer | None:
        """A renderer proven equal to the tokenizer's Jinja template on the probes, else None."""
        if getattr(tokenizer, "chat_template", None) is None or "<|im_start|>" not in str(tokenizer.chat_template):
            return None
        try:
            one = [{"role": "user", "content": "A"}]
            plain = tokenizer.apply_chat_template(one, tokenize=False)
            block = f"{cls.START}user\nA{cls.END}"
            if not isinstance(plain, str) or not plain.endswith(block):
                return None
            gen = tokenizer.apply_chat_template(one, tokenize=False, add_generation_prompt=True)
            if not gen.startswith(plain):
                return None
            r = cls(plain[: -len(block)], gen[len(plain):])
            for probe in _probes():
                msgs = [msgspec.convert(m, _Msg) for m in probe]
                for g in (False, True):
                    if r.render(msgs, g) != tokenizer.apply_chat_template(
                        probe, tokenize=False, add_generation_prompt=g
                    ):
                        return None
            return r
        except Exception:  # noqa: BLE001 - any template oddity: use Jinja
            return None


# -- token counts ----------------------------------------------------------------------------------------

CACHE_LIMIT = 500_000  # distinct words remembered (a few tens of MB at most)
# A single space between two non-space characters always starts a new pre-token in the GPT-2 byte-level
# split (only a leading space or whitespace runs hold spaces), so "word" pieces cut there are tokenised
# alone exactly as in the whole text. Segments with other whitespace around a space are encoded whole.
_IRREGULAR = re.compile(r"\s(?= )|(?<= )\s|^ | $")


def _irregular(seg: str) -> bool:
    """True when a space in seg touches other whitespace or an end (then words are not pre-tokens)."""
    if seg[0] == " " or seg[-1] == " " or "  " in seg or " \n" in seg or "\n " in seg:
        return True
    if seg.isascii():  # substring tests run at memory speed; a regex here costs as much as the counting
        return (" \t" in seg or "\t " in seg or " \r" in seg or "\r " in seg or " \x0b" in seg or "\x0b " in seg
                or " \x0c" in seg or "\x0c " in seg)
    return _IRREGULAR.search(seg) is not None


def _maybe_irregular(text: str) -> bool:
    """False only when no segment of text can be irregular (a conservative test of the whole text: a
    space next to "<" or ">" may touch an added token, which cuts a segment there)."""
    if not text.isascii():
        return True
    return (text[0] == " " or text[-1] == " " or "\t" in text or "\r" in text or "\x0b" in text or "\x0c" in text
            or "  " in text or " \n" in text or "\n " in text or "> " in text or " <" in text)


class PieceCounter:
    """Exact token counts (add_special_tokens=False) for byte-level BPE tokenizers, cached per word."""

    def __init__(self, backend, special_re, verify_first: int = 64, verify_every: int = 997):
        self.backend, self.special_re = backend, special_re
        self.first: dict[str, int] = {}  # a segment's first word
        self.spaced: dict[str, int] = {}  # " " + word
        self.verify_first, self.verify_every = verify_first, verify_every
        self.n_texts = 0
        self.disabled = False

    @classmethod
    def for_tokenizer(cls, tokenizer) -> PieceCounter | None:
        try:
            from tokenizers import models, pre_tokenizers

            bt = getattr(tokenizer, "backend_tokenizer", None)
            if bt is None or bt.normalizer is not None:
                return None
            pre = bt.pre_tokenizer
            if not isinstance(pre, pre_tokenizers.ByteLevel) or not pre.use_regex or pre.add_prefix_space:
                return None
            if not isinstance(bt.model, models.BPE) or bt.model.dropout:
                return None
            added = list(bt.get_added_tokens_decoder().values())
            if any(t.lstrip or t.rstrip or t.single_word for t in added):
                return None
            names = sorted((t.content for t in added if t.content), key=len, reverse=True)
            special = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
            return cls(bt, special)
        except Exception:  # noqa: BLE001 - an unusual tokenizer: count with the full encoder
            return None

    def _exact(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def count(self, texts: list[str]) -> list[int]:
        if self.disabled:
            return self._exact(texts)
        split = self.special_re.split if self.special_re else (lambda t: [t])
        irregular = _irregular
        first, spaced = self.first, self.spaced
        get_first, get_spaced = first.__getitem__, spaced.__getitem__
        counts = [0] * len(texts)
        whole: list[tuple[int, str]] = []  # (text index, segment) encoded as a whole
        pending: list[tuple[int, list[str]]] = []  # (text index, words) with words not cached yet
        for i, text in enumerate(texts):
            parts = split(text)
            n = len(parts) // 2  # every odd part is an added token: one token each
            check = bool(text) and _maybe_irregular(text)
            for seg in parts[::2]:
                if not seg:
                    continue
                if check and irregular(seg):
                    whole.append((i, seg))
                    continue
                words = seg.split(" ")
                try:
                    n += get_first(words[0]) + sum(map(get_spaced, words[1:]))
                except KeyError:
                    pending.append((i, words))
            counts[i] = n
        if pending:
            if len(first) + len(spaced) > CACHE_LIMIT:
                first.clear()
                spaced.clear()
            new_first = list({w[0] for _, w in pending}.difference(first.keys()))
            new_spaced = set()
            for _, w in pending:
                new_spaced.update(w[1:])
            new_spaced = list(new_spaced.difference(spaced.keys()))
            got = self._exact(new_first + [" " + x for x in new_spaced])
            first.update(zip(new_first, got))
            spaced.update(zip(new_spaced, got[len(new_first):]))
            for i, words in pending:
                counts[i] += get_first(words[0]) + sum(map(get_spaced, words[1:]))
        if whole:
            for (i, _), c in zip(whole, self._exact([seg for _, seg in whole])):
                counts[i] += c
        if not self._verified(texts, counts):
            return self._exact(texts)
        return counts

    def _verified(self, texts: list[str], counts: list[int]) -> bool:
        picked = [
            i for i in range(len(texts))
            if self.n_texts + i < self.verify_first or (self.n_texts + i) % self.verify_every == 0
        ]
        self.n_texts += len(texts)
        if not picked:
            return True
        exact = self._exact([texts[i] for i in picked])
        for i, e in zip(picked, exact):
            if counts[i] != e:
                log.warning("cached token counts differ from the tokenizer (%d vs %d); counting exactly",
                            counts[i], e)
                self.disabled = True
                return False
        return True


def template_messages(msgs) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in msgs]
