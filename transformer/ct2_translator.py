"""Translation with a run converted to CTranslate2 (transformer/export_ct2.py), without JAX.

    python translate.py --engine=ct2 --workdir runs/m30k_de_en_ct2 < sentences.de

The run's own tokenizer, source-length cut and recaser surround CTranslate2's search, so the
text path is the one ``translator.Translator`` takes. ``alpha`` is CTranslate2's length
penalty (log-probability / length^alpha), not our GNMT one; with alpha = 0 both rank
hypotheses by log-probability and decode the same tokens.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from transformer import recase
from transformer.tokenizer import TOKENIZER_FILE, Tokenizer

log = logging.getLogger('transformer')
EXPORT_FILE = 'export.json'  # written by export_ct2: what was converted, decoding settings


def import_ctranslate2():
    """The ctranslate2 module (an optional dependency), or an error that says how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ValueError('CTranslate2 is not installed: pip install -r '
                         'benchmarks/requirements.txt (or ctranslate2)') from None
    return ctranslate2


class CT2Translator:
    """Translates lines with a CTranslate2 model directory written by export_ct2."""

    def __init__(self, model_dir: str, *, beam_size: int | None = None,
                 alpha: float | None = None, compute_type: str = 'default', threads: int = 0,
                 batch_size: int = 64):
        ctranslate2 = import_ctranslate2()
        path = os.path.join(model_dir, EXPORT_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f'{model_dir} has no {EXPORT_FILE}: convert a run first '
                                    '(python -m transformer.export_ct2 --workdir RUN '
                                    f'--output {model_dir}).')
        with open(path) as f:
            self.export = json.load(f)
        self.tokenizer = Tokenizer.load(os.path.join(model_dir, TOKENIZER_FILE))
        self.pieces = [self.tokenizer.sp.id_to_piece(i) for i in range(self.tokenizer.vocab_size)]
        self.recaser = recase.load_if_present(model_dir)
        self.model = ctranslate2.Translator(model_dir, device='cpu', compute_type=compute_type,
                                            intra_threads=threads)
        self.beam_size = self.export['beam_size'] if beam_size is None else beam_size
        self.alpha = self.export['length_penalty'] if alpha is None else alpha
        self.batch_size = batch_size
        cap = ('' if not self.export.get('decode_length_offset') else
               f', outputs capped at {self.export["max_decode_len"]} pieces, not source '
               f'length + {self.export["decode_length_offset"]} as eval.py caps them')
        if cap:
            log.warning('CTranslate2 has no per-sentence length cap: %s', cap[2:])
        self.description = (f'{model_dir} (CTranslate2 {self.model.compute_type}, '
                            f'beam {self.beam_size}, CTranslate2 length penalty {self.alpha}'
                            f'{cap})')

    def translate_ids(self, src: np.ndarray) -> list[list[int]]:
        """[n, s] source ids (with EOS, 0-padded) -> each row's output ids (no EOS)."""
        tokens = [[self.pieces[i] for i in row if i] for row in src]
        results = self.model.translate_batch(
            tokens, max_batch_size=self.batch_size, beam_size=self.beam_size,
            length_penalty=self.alpha, min_decoding_length=0,
            max_decoding_length=self.export['max_decode_len'])
        return [[self.tokenizer.sp.piece_to_id(p) for p in r.hypotheses[0]] for r in results]

    def translate(self, lines: list[str]) -> list[str]:
        """One translation per line, in order; an empty line translates to ''."""
        src = self.tokenizer.encode_sources(lines, self.export['max_source_length'])
        texts = [self.tokenizer.decode(ids) for ids in self.translate_ids(src)]
        if self.recaser:
            texts = [self.recaser(text) for text in texts]
        return [text if line.strip() else '' for line, text in zip(lines, texts)]
