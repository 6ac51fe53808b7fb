"""A trained model, ready to translate: restore (averaging checkpoints, or several runs as an
ensemble), decode (greedy, beam search, or MBR over samples), detokenize and recase."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from transformer import checkpoint, config_lib, decode, mbr, metrics, recase
from transformer.tokenizer import BOS_ID, EOS_ID, TOKENIZER_FILE, Tokenizer

log = logging.getLogger('transformer')


def restore_params(checkpointer: checkpoint.Checkpointer, abstract_params, average_last: int = 1):
    """Parameters of the newest readable checkpoint, or the mean of the last ``average_last``
    readable ones (a damaged checkpoint is skipped with a warning naming it).

    Averaging the last checkpoints (the paper averages 5, section 6.1) smooths out the
    noise of the final updates. Returns (params, the steps used).
    """
    if average_last < 1:
        raise ValueError(f'average_last={average_last}; expected >= 1')
    total, steps = None, []
    for step, params in checkpointer.readable_params(abstract_params):
        total = params if total is None else jax.tree.map(lambda a, b: a + b, total, params)
        steps.insert(0, step)
        if len(steps) == average_last:
            break
    if not steps:
        raise FileNotFoundError(f'No readable checkpoint in {checkpointer.directory}: train first.')
    if len(steps) < average_last:
        log.warning('Only %d readable checkpoint(s) in %s: averaging those, not %d.', len(steps),
                    checkpointer.directory, average_last)
    return jax.tree.map(lambda x: x / len(steps), total), steps


def make_decoder(graphdef, *, max_decode_len: int, beam_size: int = 1, alpha: float = 0.6,
                 length_offset: int | None = None):
    """Returns a jitted ``decode(params, src [b, s]) -> tokens [b, max_decode_len]``.

    Beam search (with the GNMT length penalty ``alpha``) when ``beam_size`` > 1, greedy
    decoding otherwise; with ``length_offset`` no output is longer than its source + offset.
    Given a list of graphdefs, ``params`` is the list of their parameters: an ensemble
    (``decode.model_beam_search``).
    """
    is_ensemble = isinstance(graphdef, list)

    def run(params, src):
        if is_ensemble:
            model = [nnx.merge(g, p) for g, p in zip(graphdef, params)]
        else:
            model = nnx.merge(graphdef, params)
        if beam_size == 1 and length_offset is None and not is_ensemble:
            return decode.greedy_decode(model, src, bos_id=BOS_ID, eos_id=EOS_ID,
                                        max_len=max_decode_len)
        return decode.model_beam_search(model, src, beam_size=beam_size, alpha=alpha,
                                        bos_id=BOS_ID, eos_id=EOS_ID,
                                        max_len=max_decode_len, length_offset=length_offset)
    return jax.jit(run)


def make_sampler(graphdef, *, max_decode_len: int, epsilon: float):
    """Returns a jitted ``sample(params, src [b, s], rng) -> tokens [b, max_decode_len]``
    (``decode.sample_decode``: one epsilon-sampled translation per row)."""
    def run(params, src, rng):
        return decode.sample_decode(nnx.merge(graphdef, params), src, rng, bos_id=BOS_ID,
                                    eos_id=EOS_ID, max_len=max_decode_len, epsilon=epsilon)
    return jax.jit(run)


def restore_run(config: ml_collections.ConfigDict, workdir: str, tokenizer: Tokenizer,
                average_last: int = 1):
    """(graphdef, params, checkpoint steps) of the run in ``workdir`` with ``config``'s model."""
    graphdef, abstract = nnx.split(nnx.eval_shape(config_lib.make_model(config, tokenizer.vocab_size)),
                                   nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            abstract)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), None)
    params, steps = restore_params(ckpt, abstract, average_last)
    return graphdef, params, steps


def _check_same_tokenizer(workdir: str, other: str) -> None:
    """An ensemble adds up probabilities of the same pieces: one SentencePiece model for all."""
    paths = [os.path.join(w, TOKENIZER_FILE) for w in (workdir, other)]
    if not os.path.exists(paths[1]):
        raise FileNotFoundError(f'{other} has no {TOKENIZER_FILE}: is it a trained '
                                'workdir? Train it first, with the same data config.')
    with open(paths[0], 'rb') as a, open(paths[1], 'rb') as b:
        if a.read() != b.read():
            raise ValueError(f'{other} has a different tokenizer from {workdir}: an ensemble '
                             'needs runs trained with the same data config (vocabulary, '
                             'dataset, direction), so that they share one SentencePiece model')


class DecodeSpeed:
    """Generated tokens (EOS included) per second of ``translate``'s batches after the
    first, whose time includes compiling the search (0 with a single batch)."""

    def __init__(self):
        self.tokens, self.seconds, self.batches = 0, 0.0, 0

    def add(self, tokens: int, seconds: float) -> None:
        if self.batches:
            self.tokens += tokens
            self.seconds += seconds
        self.batches += 1

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _describe_steps(steps: list[int]) -> str:
    return f'average of steps {steps}' if len(steps) > 1 else f'step {steps[0]}'


class Translator:
    """Translates lists of sentences with the parameters of a trained run."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
                 beam_size: int | None = None, alpha: float | None = None, average_last: int = 1,
                 ensemble: Sequence[str] = ()):
        """``ensemble``: other trained workdirs that decode together with ``workdir``, each
        with the model config in its own config.json; all must share ``workdir``'s tokenizer.
        Search settings, source length and batch size come from ``config``."""
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f'No such workdir: {workdir}; train first: '
                                    f'python train.py --config CONFIG --workdir {workdir}')
        if ensemble and config.eval.mbr_samples:
            raise ValueError('MBR decoding (config.eval.mbr_samples) samples from one model; '
                             'it does not combine with an ensemble: set '
                             '--config.eval.mbr_samples=0 or decode one workdir')
        self.tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
        self.recaser = recase.load_if_present(workdir)  # None unless trained on lowercased text
        for other in ensemble:
            _check_same_tokenizer(workdir, other)
        self.members = [workdir, *ensemble]
        member_configs = [config] + [config_lib.load_run_config(other) for other in ensemble]
        graphdefs, params, self.member_steps = map(list, zip(*(
            restore_run(c, w, self.tokenizer, average_last)
            for c, w in zip(member_configs, self.members))))
        self.steps = self.member_steps[0]
        # One model: its graphdef and parameters; an ensemble: the lists (see make_decoder).
        self.graphdef, self.params = (graphdefs, params) if ensemble else (graphdefs[0], params[0])
        e = config.eval
        self.beam_size = e.beam_size if beam_size is None else beam_size
        self.alpha = e.length_penalty if alpha is None else alpha
        if self.beam_size < 1:
            raise ValueError(f'beam_size={self.beam_size}; expected >= 1')
        self.max_source_length = config.data.max_source_length
        self.batch_size = e.batch_size
        self._eval_config = e
        self._workdir = workdir
        self.set_length_penalty(self.alpha)
        self.mbr: mbr.SampleReranker | None = None  # MBR decoding, when config.eval asks for it
        if e.mbr_samples:
            sampler = make_sampler(self.graphdef, max_decode_len=e.max_decode_len,
                                   epsilon=e.mbr_epsilon)
            self.mbr = mbr.SampleReranker(
                lambda src, rng: sampler(self.params, src, rng), self.tokenizer.decode,
                metrics.lowercase_tokenizer(config.data.target_language),
                num_samples=e.mbr_samples, epsilon=e.mbr_epsilon, rows_per_call=self.beam_size,
                seed=config.seed)

    def set_length_penalty(self, alpha: float) -> None:
        """Decodes with GNMT length penalty ``alpha`` from now on (the parameters stay)."""
        if alpha < 0:
            raise ValueError(f'length penalty alpha={alpha}; expected >= 0')
        e = self._eval_config
        self.alpha = alpha
        self._decode = make_decoder(self.graphdef, max_decode_len=e.max_decode_len,
                                    beam_size=self.beam_size, alpha=alpha,
                                    length_offset=e.decode_length_offset or None)

    @property
    def description(self) -> str:
        """What translates: workdir, checkpoint step(s), search and its settings."""
        search = f'beam {self.beam_size}, alpha {self.alpha}' if self.beam_size > 1 else 'greedy'
        mbr_part = f'; {self.mbr.description}' if self.mbr else ''
        if len(self.members) > 1:
            return (f'an ensemble of {len(self.members)}: ' + ', '.join(
                f'{w} ({_describe_steps(s)})' for w, s in zip(self.members, self.member_steps))
                + f'; {search}')
        return f'{self._workdir} ({_describe_steps(self.steps)}, {search}{mbr_part})'

    def kv_cache_bytes_per_token(self) -> int:
        """Bytes the decoder's self-attention cache grows by per generated token (K and V of
        every layer; a decoder-only model's source positions count the same per token).
        An encoder-decoder's cross-attention K/V add a fixed cost per source token."""
        graphdef = self.graphdef[0] if isinstance(self.graphdef, list) else self.graphdef
        params = self.params[0] if isinstance(self.params, list) else self.params
        cache = nnx.merge(graphdef, params).init_cache(1, 1)
        return sum(x.nbytes for x in jax.tree.leaves(cache))

    @classmethod
    def from_workdir(cls, workdir: str, **kwargs) -> Translator:
        return cls(config_lib.load_run_config(workdir), workdir, **kwargs)

    def translate(self, lines: list[str]) -> list[str]:
        """One translation per line, in order; an empty line translates to ''."""
        src = self.tokenizer.encode_sources(lines, self.max_source_length)
        outputs = []
        self.speed = DecodeSpeed()
        for start in range(0, len(lines), self.batch_size):
            tick = time.perf_counter()
            batch = src[start:start + self.batch_size]
            rows = len(batch)
            if rows < self.batch_size:  # one compiled shape: fill with empty rows
                batch = np.concatenate([batch, np.zeros((self.batch_size - rows, batch.shape[1]),
                                                        np.int32)])
            tokens = np.asarray(self._decode(self.params, batch))[:rows]
            self.speed.add(int(np.count_nonzero(tokens)), time.perf_counter() - tick)
            texts = [self.tokenizer.decode(row) for row in tokens]
            if self.mbr:
                texts = self.mbr(batch, texts, start)
            outputs += texts
        if self.recaser:
            outputs = [self.recaser(out) for out in outputs]
        return [out if line.strip() else '' for line, out in zip(lines, outputs)]
