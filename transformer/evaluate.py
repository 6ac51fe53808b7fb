"""Translate a split with a trained model and score it (sacreBLEU, exact match)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from transformer import data, decode, metrics


def make_translator(graphdef, *, max_decode_len: int):
    """Returns a jitted ``translate(params, src [b, s]) -> tokens [b, max_decode_len]``."""
    def translate(params, src):
        model = nnx.merge(graphdef, params)
        return decode.greedy_decode(model, src, bos_id=data.BOS_ID, eos_id=data.EOS_ID,
                                    max_len=max_decode_len)
    return jax.jit(translate)


def translate_pairs(translate, params, pairs: list[data.Pair], tokenizer: data.Tokenizer,
                    lengths: data.Lengths, batch_size: int) -> list[str]:
    """Translates the source side of every pair, in order; returns detokenized hypotheses."""
    hypotheses = []
    for batch in data.eval_batches(pairs, tokenizer, lengths, batch_size):
        tokens = np.asarray(translate(params, batch['inputs']))
        real = np.any(batch['inputs'] != 0, axis=1)  # the last batch has filler rows
        hypotheses += [tokenizer.decode(row) for row, keep in zip(tokens, real) if keep]
    return hypotheses


def score_and_write(workdir: str, split: str, step: int, sources: list[str],
                    hypotheses: list[str], references: list[str],
                    num_samples: int = 5) -> dict:
    """Scores hypotheses, writes them and ``eval_<split>.json`` into ``workdir``.

    Returns the scores (also printed, with sacreBLEU's signature and sample translations).
    """
    score, signature = metrics.bleu(hypotheses, references)
    result = {'split': split, 'step': step, 'num_examples': len(references),
              'sacrebleu': round(score, 2), 'sacrebleu_signature': signature,
              'exact_match': round(metrics.exact_match(hypotheses, references), 2)}
    with open(os.path.join(workdir, f'hypotheses_{split}.txt'), 'w') as f:
        f.writelines(h + '\n' for h in hypotheses)
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print(f'{split} at step {step}: sacreBLEU {score:.2f} ({signature}); '
          f'exact match {result["exact_match"]:.2f}% of {len(references)}')
    for src, hyp, ref in list(zip(sources, hypotheses, references))[:num_samples]:
        mark = '=' if hyp.strip() == ref.strip() else 'x'
        print(f'  [{mark}] {src}\n      hyp: {hyp}\n      ref: {ref}')
    return result
