"""Scores (sacreBLEU, exact match) and metric writers (JSON lines + TensorBoard)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import sacrebleu


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus sacreBLEU (cased, detokenized input, 13a tokenization): (score, signature)."""
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())


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


class MetricWriter:
    """Appends ``{'step': s, 'split': ..., name: value}`` to ``metrics.jsonl`` and TensorBoard.

    TensorBoard event files come from tensorboardX, which does not need TensorFlow.
    ``enabled=False`` (non-zero processes of a multi-host run) writes nothing.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # heavy import, only where needed
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for name, value in scalars.items():
            self._tb.add_scalar(f'{split}/{name}', float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl``, oldest first.

    Safe to call while the run writes: a last line still being written is left out.
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith('\n'):  # the line being written right now
                break
            if line.strip():
                records.append(json.loads(line))
    return records
