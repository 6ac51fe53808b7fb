"""Minimum-Bayes-risk (MBR) selection: the candidate that agrees most with the model's samples.

Beam search looks for the single most probable output, which is not the output with the
highest expected BLEU. MBR decoding (Kumar and Byrne, 2004; with samples as pseudo-
references, Eikema and Aziz, 2020) picks from a candidate set the hypothesis h maximising

    U(h) = 1/N * sum_j BLEU+1(h, y_j),    y_1 .. y_N sampled from the model,

a Monte Carlo estimate of h's expected sentence BLEU against what the model believes the
translation to be. BLEU+1 is sentence BLEU with add-one smoothing of the 2- to 4-gram
precisions (Lin and Och, 2004): ``sacrebleu``'s ``smooth_method='add-k'``, to which the tests
compare it. Candidates and samples are compared as token lists, tokenized as the score that
is being optimised tokenizes them. ``SampleReranker`` draws the samples from a model and
applies the selection to a batch of search outputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import jax
import numpy as np

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


class SampleReranker:
    """Replaces each search output by the MBR choice among it and the model's samples.

    ``sample(src [b, s], rng) -> tokens [b, L]`` draws one translation per row;
    ``detokenize`` turns a row of ids into text; ``utility_tokenize`` splits text as the
    optimised score does. Samples are drawn ``rows_per_call`` per sentence at a time (as many
    rows as the search decodes). The key is ``seed`` folded with the batch's offset and the
    call: the same config translates the same input the same way.
    """

    def __init__(self, sample: Callable, detokenize: Callable, utility_tokenize: Callable, *,
                 num_samples: int, epsilon: float, rows_per_call: int, seed: int):
        self.sample, self.detokenize, self.utility_tokenize = sample, detokenize, utility_tokenize
        self.num_samples, self.rows_per_call = num_samples, rows_per_call
        self.description = f'MBR over {num_samples} samples, epsilon {epsilon}'
        self.key = jax.random.key(seed)

    def __call__(self, batch: np.ndarray, search_texts: list[str], offset: int) -> list[str]:
        """batch: [b, s] source ids (its first len(search_texts) rows are real); offset: the
        index of its first sentence. Returns one text per search text."""
        src = np.repeat(batch, self.rows_per_call, axis=0)              # [b * per_call, s]
        samples: list[list[str]] = [[] for _ in search_texts]
        for call in range(-(-self.num_samples // self.rows_per_call)):
            rng = jax.random.fold_in(jax.random.fold_in(self.key, offset), call)
            tokens = np.asarray(self.sample(src, rng))
            tokens = tokens.reshape(len(batch), self.rows_per_call, -1)  # [b, per_call, len]
            for row, drawn in zip(samples, tokens):
                row += [self.detokenize(t) for t in drawn]
        chosen = []
        for search_text, drawn in zip(search_texts, samples):
            texts = [search_text] + drawn[:self.num_samples]
            tokenized = {text: self.utility_tokenize(text).split() for text in set(texts)}
            token_lists = [tokenized[text] for text in texts]
            chosen.append(texts[select(token_lists, token_lists[1:])])
        return chosen
