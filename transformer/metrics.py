"""Translation scores: sacreBLEU, the tokenized lowercased BLEU of published results, chrF,
exact match."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus sacreBLEU (cased, detokenized input, 13a tokenization): (score, signature)."""
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (character 6-gram F-score, beta 2; sacreBLEU's defaults) on cased text."""
    return sacrebleu.CHRF().corpus_score(list(hypotheses), [list(references)]).score


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str], language: str) -> float:
    """BLEU on Moses-tokenized, lowercased text, as multi-bleu.perl computes it.

    Published Multi30k results are computed this way on the dataset's tokenized, lowercased
    references; it is not comparable with sacreBLEU, which scores detokenized cased text.
    """
    tok = lowercase_tokenizer(language)
    score = sacrebleu.BLEU(tokenize='none', force=True).corpus_score(
        [tok(h) for h in hypotheses], [[tok(r) for r in references]])
    return score.score


def lowercase_tokenizer(language: str):
    """``text -> str``: lowercased and Moses-tokenized (tokens separated by single spaces),
    the form ``tokenized_bleu`` scores."""
    from sacremoses import MosesTokenizer
    tokenizer = MosesTokenizer(lang=language)

    def tok(text: str) -> str:
        return tokenizer.tokenize(text.lower(), escape=False, return_str=True)
    return tok


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of hypotheses identical to their reference (after stripping whitespace)."""
    if not references:
        return 0.0
    hits = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
    return 100.0 * hits / len(references)
