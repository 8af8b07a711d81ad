"""Text-similarity metrics from maintained libraries (rapidfuzz, sacrebleu, nltk, rouge-score), each a
score in [0, 1] where 1 means identical. Imported lazily so the grader module loads fast."""

from __future__ import annotations

from functools import lru_cache


def fuzzy_match(output: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(output, reference) / 100.0


def bleu(output: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(output, [reference]).score / 100.0


def gleu(output: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], output.split()))


@lru_cache(maxsize=8)
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def rouge(kind: str, output: str, reference: str) -> float:
    """kind: rouge1..rouge5 or rougeL; the F-measure (target = reference, prediction = output)."""
    return float(_rouge(kind).score(reference, output)[kind].fmeasure)


def similarity(metric: str, output: str, reference: str) -> float:
    if metric == "fuzzy_match":
        return fuzzy_match(output, reference)
    if metric == "bleu":
        return bleu(output, reference)
    if metric == "gleu":
        return gleu(output, reference)
    if metric == "rouge_l":
        return rouge("rougeL", output, reference)
    if metric.startswith("rouge_") and metric[-1].isdigit():
        return rouge(f"rouge{metric[-1]}", output, reference)
    raise ValueError(f"unknown evaluation_metric {metric!r}")
