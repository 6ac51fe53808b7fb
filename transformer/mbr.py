"""Minimum-Bayes-risk (MBR) selection: the candidate that agrees most with the model's samples.

Beam search looks for the single most probable output, which is not the output with the
highest expected BLEU. MBR decoding (Kumar and Byrne, 2004; with samples as pseudo-
references, Eikema and Aziz, 2020) picks from a candidate set the hypothesis h maximising

    U(h) = 1/N * sum_j BLEU+1(h, y_j),    y_1 .. y_N sampled from the model,

a Monte Carlo estimate of h's expected sentence BLEU against what the model believes the
translation to be. BLEU+1 is sentence BLEU with add-one smoothing of the 2- to 4-gram
precisions (Lin and Och, 2004): ``sacrebleu``'s ``smooth_method='add-k'``, to which the tests
compare it. Candidates and samples are compared as token lists, tokenized as the score that
is being optimised tokenizes them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

MAX_ORDER = 4


def ngram_counts(tokens: Sequence[str]) -> list[Counter]:
    """Counts of the 1- to 4-grams of ``tokens``: [Counter of n-gram tuples] per order."""
    return [Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
            for n in range(1, MAX_ORDER + 1)]


def sentence_bleu(hyp: Sequence[str], ref: Sequence[str], *, hyp_counts: list[Counter] | None = None,
                  ref_counts: list[Counter] | None = None) -> float:
    """BLEU+1 of one hypothesis against one reference, in [0, 1].

    ``hyp_counts`` / ``ref_counts`` (from ``ngram_counts``) may be passed to avoid recounting.
    """
    hyp_counts = hyp_counts or ngram_counts(hyp)
    ref_counts = ref_counts or ngram_counts(ref)
    log_precision = 0.0
    for n, (h, r) in enumerate(zip(hyp_counts, ref_counts), start=1):
        correct = sum((h & r).values())
        total = max(len(hyp) - n + 1, 0)
        if n == 1 and correct == 0:
            return 0.0  # no word in common (also an empty hypothesis)
        if n > 1:  # add-one smoothing of the higher orders
            correct, total = correct + 1, total + 1
        log_precision += math.log(correct / total)
    brevity = min(0.0, 1.0 - len(ref) / len(hyp))
    return math.exp(brevity + log_precision / MAX_ORDER)


def select(candidates: Sequence[Sequence[str]], samples: Sequence[Sequence[str]]) -> int:
    """The index of the candidate with the highest mean BLEU+1 against ``samples``.

    candidates: token lists (the hypotheses to choose from; may include the samples and the
    beam search output). samples: N >= 1 token lists drawn from the model. Ties go to the
    earliest candidate, so placing the beam output first makes it win ties.
    """
    if not candidates or not samples:
        raise ValueError('MBR needs at least one candidate and one sample.')
    # Samples repeat often (a confident model draws the same sentence many times): count
    # each distinct one once, weighted by its frequency.
    weights = Counter(tuple(s) for s in samples)
    refs = [(ref, ngram_counts(ref), w) for ref, w in weights.items()]
    best, best_utility, seen = 0, -1.0, {}
    for i, cand in enumerate(candidates):
        key = tuple(cand)
        if key not in seen:
            counts = ngram_counts(cand)
            seen[key] = sum(w * sentence_bleu(cand, ref, hyp_counts=counts, ref_counts=rc)
                            for ref, rc, w in refs)
        if seen[key] > best_utility:
            best, best_utility = i, seen[key]
    return best
