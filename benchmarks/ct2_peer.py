"""The decoding peer: CTranslate2 on the weights of our small model, converted by
transformer/export_ct2.py, decoding the same batch as the JAX ``decoding`` case.

Every hypothesis runs to the full 32 tokens in both (ours: an EOS id no token can take;
CTranslate2: ``min_decoding_length`` = ``max_decoding_length``), so both generate exactly
batch x 32 tokens, on the same cores (CTranslate2's ``intra_threads`` = the cores this
process may use, as XLA's thread pool). Install with ``pip install -r
benchmarks/requirements.txt`` (not a runtime dependency).
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.common import DECODE_SIZE, median_seconds, peak_rss_mib
from configs import common
from transformer import config_lib, export_ct2


def decoding(kind: str, compute_type: str, *, warmup: int = 1, repeats: int = 3) -> dict:
    import ctranslate2

    variant, vocab, batch, src_len, tgt_len = DECODE_SIZE
    config = common.base_config()
    config.model.update(variant=variant, dropout_rate=0.0)
    model = config_lib.make_model(config, vocab)()
    params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
    pieces = ['<pad>', '<unk>', '<s>', '</s>'] + [f'p{i}' for i in range(4, vocab)]
    rng = np.random.default_rng(0)  # random source tokens, no padding, as the JAX case
    source = [[pieces[i] for i in row] for row in rng.integers(4, vocab, (batch, src_len))]
    with tempfile.TemporaryDirectory() as model_dir:
        start = time.perf_counter()
        spec = export_ct2.build_spec(config.model, params, pieces)
        spec.validate()
        spec.optimize(quantization=None)
        spec.save(model_dir)
        translator = ctranslate2.Translator(model_dir, device='cpu', compute_type=compute_type,
                                            intra_threads=len(os.sched_getaffinity(0)))
        load_s = time.perf_counter() - start

        def run():
            return translator.translate_batch(
                source, max_batch_size=batch, beam_size=4 if kind == 'beam' else 1,
                length_penalty=0.6, min_decoding_length=tgt_len, max_decoding_length=tgt_len)

        lengths = {len(r.hypotheses[0]) for r in run()}
        if lengths != {tgt_len}:
            raise RuntimeError(f'CTranslate2 generated {sorted(lengths)} tokens, not {tgt_len}')
        seconds = median_seconds(run, warmup=warmup, repeats=repeats)
    return {'step_s': seconds, 'tokens_per_s': batch * tgt_len / seconds,
            'compile_s': load_s, 'peak_rss_mib': peak_rss_mib()}
