"""Score translations (sacreBLEU, tokenized BLEU, exact match) and write them to the workdir."""

from __future__ import annotations

import json
import os

from transformer import metrics


def score_and_write(workdir: str, name: str, step: int, sources: list[str],
                    hypotheses: list[str], references: list[str], *, target_language: str,
                    num_samples: int = 5, extra: dict | None = None) -> dict:
    """Scores hypotheses, writes ``hypotheses_<name>.txt`` and ``eval_<name>.json``.

    Returns the scores (also printed, with sacreBLEU's signature and sample translations):
    sacreBLEU (cased, detokenized), the tokenized lowercased BLEU that published Multi30k
    results use, and exact match.
    """
    score, signature = metrics.bleu(hypotheses, references)
    tok_score = metrics.tokenized_bleu(hypotheses, references, target_language)
    result = {'name': name, 'step': step, 'num_examples': len(references),
              'sacrebleu': round(score, 2), 'sacrebleu_signature': signature,
              'tokenized_lowercased_bleu': round(tok_score, 2),
              'exact_match': round(metrics.exact_match(hypotheses, references), 2),
              **(extra or {})}
    with open(os.path.join(workdir, f'hypotheses_{name}.txt'), 'w') as f:
        f.writelines(h + '\n' for h in hypotheses)
    with open(os.path.join(workdir, f'eval_{name}.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print(f'{name} (step {step}): sacreBLEU {score:.2f} ({signature}); tokenized lowercased '
          f'BLEU {tok_score:.2f}; exact match {result["exact_match"]:.2f}% of {len(references)}')
    for src, hyp, ref in list(zip(sources, hypotheses, references))[:num_samples]:
        mark = '=' if hyp.strip() == ref.strip() else 'x'
        print(f'  [{mark}] {src}\n      hyp: {hyp}\n      ref: {ref}')
    return result
