"""Streaming text: multi-byte characters split over tokens, SentencePiece spaces, stop-string hold-back."""

from __future__ import annotations

import json

import pytest

from ml.serve.detokenize import IncrementalDetokenizer, StopStringMatcher

MIXED = "Hello 世界! 你好，朋友们。Emoji: 🙂🚀👩‍💻 naïve café — ok"


def stream(tok, ids) -> list[str]:
    d = IncrementalDetokenizer(tok)
    deltas = [d.add(i) for i in ids]
    return deltas + [d.flush()]


def test_byte_level_bpe_chinese_and_emoji(tiny_model_path):
    from ml.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ids = tok.encode(MIXED, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the text should split characters across tokens"
    deltas = stream(tok, ids)
    assert "".join(deltas) == MIXED
    assert not any("\ufffd" in d for d in deltas)


def test_special_tokens_are_skipped(tiny_model_path):
    from ml.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ids = tok.encode("a 🙂", add_special_tokens=False) + [tok.eos_token_id]
    assert "".join(stream(tok, ids)) == "a 🙂"


def test_truncated_character_is_flushed_like_decode(tiny_model_path):
    from ml.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ids = tok.encode("ab🚀", add_special_tokens=False)
    cut = ids[:-1]  # the emoji's last byte(s) never arrive (max_tokens hit)
    assert "".join(stream(tok, cut)) == tok.decode(cut)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    """A small Llama-style tokenizer: Metaspace '▁' word boundaries and byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    tk.train_from_iterator(["hello world, the cat sat on the mat. Hello there world!"] * 20, trainer)
    # Byte-fallback pieces are ordinary vocabulary (as in Llama's), not special tokens.
    spec = json.loads(tk.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    tk = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")


def test_sentencepiece_spaces_and_byte_fallback(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    text = "hello world 你好 the cat 🙂 sat"
    ids = tok.encode(text, add_special_tokens=False)
    assert any(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids)
    deltas = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert deltas[0].startswith("hello")  # the prepended "▁" of the first piece is stripped ...
    assert any(d.startswith(" ") and d.strip() for d in deltas[1:])  # ... later ones keep their space


def test_stop_matcher_holds_back_prefixes():
    m = StopStringMatcher(["<END>", "stop here"])
    out = []
    for piece in ["abc <", "EN", "x then st", "op h", "ere and more"]:
        text, hit = m.push(piece)
        out.append(text)
        if hit:
            break
    assert out == ["abc ", "", "<ENx then ", "", ""]
    assert hit and "".join(out) == "abc <ENx then "


def test_stop_matcher_flush_releases_held_text():
    m = StopStringMatcher(["###"])
    assert m.push("a ##") == ("a ", False)
    assert m.flush() == "##"
    assert StopStringMatcher(None).push("x") == ("x", False)
