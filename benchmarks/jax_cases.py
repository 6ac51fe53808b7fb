"""The JAX cases: matmul peaks, train steps, beam search and greedy decoding, input pipeline.

Each function returns a dict of measurements; ``benchmarks/__main__.py`` runs each in its
own process and adds MFU against the peaks measured in the same run.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import DECODE_SIZE, TRAIN_SIZES, median_seconds, peak_rss_mib
from transformer import decode, optim, steps
from transformer.decoder_only import DecoderOnly
from transformer.flops import train_flops
from transformer.model import EncoderDecoder, ModelConfig
from transformer.tokenizer import BOS_ID


def matmul_peaks(n: int = 4096, repeats: int = 5) -> dict:
    """GFLOP/s of an n^3 jnp.dot: float32, and bfloat16 inputs with float32 accumulation."""
    out = {}
    key = jax.random.key(0)
    for name, dtype in (('float32', jnp.float32), ('bfloat16', jnp.bfloat16)):
        a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dtype)
        dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        seconds = median_seconds(lambda: dot(a, b).block_until_ready(), warmup=1, repeats=repeats)
        out[f'peak_gflops_{name}'] = 2 * n ** 3 / seconds / 1e9
    return out


def _synthetic_batch(batch: int, src_len: int, tgt_len: int, vocab: int) -> dict:
    """Random tokens, no padding: every position is a real token."""
    rng = np.random.default_rng(0)
    targets = rng.integers(4, vocab, (batch, tgt_len)).astype(np.int32)
    decoder_inputs = np.concatenate([np.full((batch, 1), BOS_ID, np.int32), targets[:, :-1]], 1)
    return {'inputs': jnp.asarray(rng.integers(4, vocab, (batch, src_len)).astype(np.int32)),
            'targets': jnp.asarray(targets), 'decoder_inputs': jnp.asarray(decoder_inputs)}


def train_step(size: str, dtype: str, dropout: float, *, warmup: int = 2, repeats: int = 5) -> dict:
    """One optimizer step (forward, backward, Adam) of our model on a synthetic batch."""
    variant, vocab, batch, src_len, tgt_len = TRAIN_SIZES[size]
    # 'mixed': float32 activations, bfloat16 matmul operands in both passes.
    precision = dict(matmul_dtype='bfloat16') if dtype == 'mixed' else dict(dtype=dtype)
    cfg = ModelConfig.make(variant, vocab, dropout_rate=dropout, **precision)
    return {**time_train_step(cfg, batch, src_len, tgt_len, warmup=warmup, repeats=repeats),
            'peak_rss_mib': peak_rss_mib()}


def compiled_train_step(cfg: ModelConfig, rows: int, src_len: int, tgt_len: int):
    """(compiled step, initial state, synthetic batch, compile seconds) of ``cfg``'s train
    step with Adam."""
    def make_model():
        return EncoderDecoder(cfg, rngs=nnx.Rngs(0))
    optimizer = optim.make_optimizer(optim.rsqrt_schedule(1e-4, 100, 0), 'adam',
                                     dict(b1=0.9, b2=0.98, eps=1e-9))
    graphdef, _ = steps.abstract_state(make_model, optimizer)
    state = steps.init_state(make_model, optimizer)
    step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0)
    data = _synthetic_batch(rows, src_len, tgt_len, cfg.vocab_size)
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    return compiled, state, data, time.perf_counter() - start


def time_train_step(cfg: ModelConfig, rows: int, src_len: int, tgt_len: int, *, warmup: int,
                    repeats: int) -> dict:
    """Median step time of ``cfg``'s train step (Adam) on a synthetic batch, its compile time,
    target tokens per second and model FLOPs."""
    compiled, state, data, compile_s = compiled_train_step(cfg, rows, src_len, tgt_len)
    holder = {'state': state, 'losses': []}

    def run():
        holder['state'], sums = compiled(holder['state'], data)
        holder['losses'].append(float(sums['loss'] / sums['tokens']))

    seconds = median_seconds(run, warmup=warmup, repeats=repeats)
    return {'step_s': seconds, 'tokens_per_s': rows * tgt_len / seconds, 'compile_s': compile_s,
            'model_flops': train_flops(cfg, src_len, tgt_len, rows),
            'first_losses': holder['losses'][:3],
            'library_fusions': library_fusions(compiled.as_text())}


def library_fusions(hlo: str) -> dict:
    """How many operations of a compiled program each matmul library runs."""
    return {lib: hlo.count(marker) for lib, marker in (
        ('ynnpack', '"__ynn_fusion"'), ('xnnpack', '"__xnn_fusion"'), ('onednn', 'onednn'))
        if marker in hlo}


def compiled_decoder(kind: str, dtype: str, architecture: str = 'encoder_decoder'):
    """(compiled decoder, parameters, source batch, compile seconds) of beam search (beam 4,
    alpha 0.6) or greedy decoding with the small model of ``DECODE_SIZE`` in ``dtype``
    (``architecture``: the encoder-decoder, or the decoder-only model of the same size).

    An EOS id no token can take (-1) keeps every hypothesis going to ``max_len``, so every
    run generates exactly batch x 32 tokens (beam: per sentence, not per beam).
    """
    variant, vocab, batch, src_len, tgt_len = DECODE_SIZE
    cfg = ModelConfig.make(variant, vocab, dropout_rate=0.0, dtype=dtype, architecture=architecture)
    model = (DecoderOnly if architecture == 'decoder_only' else EncoderDecoder)(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    src = _synthetic_batch(batch, src_len, tgt_len, vocab)['inputs']

    def run_decoder(params, src):
        m = nnx.merge(graphdef, params)
        if kind == 'beam':
            return decode.model_beam_search(m, src, beam_size=4, alpha=0.6, bos_id=BOS_ID,
                                            eos_id=-1, max_len=tgt_len)
        return decode.greedy_decode(m, src, bos_id=BOS_ID, eos_id=-1, max_len=tgt_len)

    start = time.perf_counter()
    compiled = jax.jit(run_decoder).lower(params, src).compile()
    return compiled, params, src, time.perf_counter() - start


def decoding(kind: str, dtype: str, architecture: str = 'encoder_decoder', *, warmup: int = 1,
             repeats: int = 3) -> dict:
    """Generated tokens per second of ``compiled_decoder``."""
    compiled, params, src, compile_s = compiled_decoder(kind, dtype, architecture)
    seconds = median_seconds(lambda: compiled(params, src).block_until_ready(),
                             warmup=warmup, repeats=repeats)
    _, _, batch, _, tgt_len = DECODE_SIZE
    return {'step_s': seconds, 'tokens_per_s': batch * tgt_len / seconds,
            'compile_s': compile_s, 'peak_rss_mib': peak_rss_mib()}


def dropout_masks(*, rate: float = 0.1, warmup: int = 1, repeats: int = 7) -> dict:
    """The dropout of a small train step's forward pass: ours against a word per element.

    17 dropout sites of 64 x 32 x 256 (embeddings and sublayer outputs of 3 + 3 layers), as
    ``layers.dropout`` draws them (a byte per element) and as ``jax.random.bernoulli`` would
    (a 32-bit threefry word per element); the two alternate, so both see the same machine.
    """
    from transformer import layers

    def bernoulli(x, key):
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0)

    x = jnp.ones((17, 64, 32, 256))
    fns = {'step_s': jax.jit(lambda x, key: layers.dropout(x, rate, key)),
           'reference_step_s': jax.jit(bernoulli)}
    out = _alternate(fns, (x, jax.random.key(0)), warmup, repeats)
    return {**out, 'elements_per_s': x.size / out['step_s'], 'peak_rss_mib': peak_rss_mib()}


def _alternate(fns: dict, args: tuple, warmup: int, repeats: int) -> dict:
    """Median seconds of each jitted function, calls alternating so all see the same machine."""
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def canonical_matmul(*, warmup: int = 2, repeats: int = 15) -> dict:
    """The three bfloat16 matmuls of a small train step's output layer: ``layers.dot``
    (each in the row-major form XLA:CPU runs at bfloat16 speed) against the same products
    written with transposes, as autodiff emits them.

    Decoder states x [2048, 256], the 8,192-token embedding table [8192, 256] and the
    logits' gradient g [2048, 8192]: logits x @ table.T, g @ table and g.T @ x.
    """
    from transformer import layers

    key = jax.random.key(0)
    x, table, g = (jax.random.normal(jax.random.fold_in(key, i), shape).astype(jnp.bfloat16)
                   for i, shape in enumerate(((2048, 256), (8192, 256), (2048, 8192))))

    def ours(x, table, g):
        return (layers.dot(x, table, transpose_b=True), layers.dot(g, table),
                layers.dot(x, g, transpose_a=True).T)

    def transposed(x, table, g):
        f32 = jnp.float32
        return (jnp.dot(x, table.T, preferred_element_type=f32),
                jnp.dot(g, table, preferred_element_type=f32),
                jnp.dot(g.T, x, preferred_element_type=f32))

    fns = {'step_s': jax.jit(ours), 'reference_step_s': jax.jit(transposed)}
    out = _alternate(fns, (x, table, g), warmup, repeats)
    return {**out, 'gflops': 3 * 2 * 2048 * 256 * 8192 / out['step_s'] / 1e9,
            'peak_rss_mib': peak_rss_mib()}


def loss_head(*, warmup: int = 2, repeats: int = 15) -> dict:
    """The output layer and label-smoothed loss of a Multi30k step, with their gradients.

    16 x 64 decoder states of width 256 against a 4,000-token embedding: our loss with its
    own gradient (``losses.token_losses``) against autodiff of the textbook version
    (log_softmax, a one-hot smoothed target, argmax accuracy), alternating.
    """
    from transformer import layers, losses

    rows, d, vocab, eps = 16 * 64, 256, 4000, 0.1
    key = jax.random.key(0)
    y = jax.random.normal(key, (rows, d))
    table = jax.random.normal(jax.random.fold_in(key, 1), (vocab, d)) * d ** -0.5
    targets = jax.random.randint(jax.random.fold_in(key, 2), (rows,), 4, vocab)

    def ours(y, table):
        loss, nll, correct = losses.token_losses(
            layers.matmul(y, table.T, jnp.float32), targets, eps)
        return jnp.sum(loss), (jnp.sum(nll), jnp.sum(correct))

    def textbook(y, table):
        logits = y @ table.T
        log_p = jax.nn.log_softmax(logits)
        q = jnp.where(jax.nn.one_hot(targets, vocab) > 0, 1 - eps, eps / (vocab - 1))
        nll = -jnp.take_along_axis(log_p, targets[:, None], -1)
        correct = jnp.argmax(logits, -1) == targets
        return -jnp.sum(q * log_p), (jnp.sum(nll), jnp.sum(correct))

    fns = {name: jax.jit(jax.grad(fn, argnums=(0, 1), has_aux=True))
           for name, fn in (('step_s', ours), ('reference_step_s', textbook))}
    out = _alternate(fns, (y, table), warmup, repeats)
    return {**out, 'tokens_per_s': rows / out['step_s'], 'peak_rss_mib': peak_rss_mib()}


def input_pipeline(manual_dir: str, *, subword_nbest: int = 1, batches: int = 30) -> dict:
    """Multi30k training batches per second: tokenize, filter, pack 32 rows of 64 + 64.

    The process is pinned to one core first, so this is what one core supplies. With
    ``subword_nbest`` > 1 every example's segmentation is drawn anew (subword regularization).
    """
    import os

    from configs import multi30k
    from transformer import datasets
    from transformer import input_pipeline as pipeline
    from transformer.tokenizer import train_tokenizer

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    config = multi30k.get_config()
    pairs = datasets.load_splits('multi30k', '', ['train'], manual_dir=manual_dir)['train']
    tokenizer = train_tokenizer((t for pair in pairs[:10000] for t in pair), 8000)
    lengths = pipeline.Lengths(config.data.max_source_length, config.data.max_target_length)
    alpha = config.data.subword_alpha
    iterator = iter(pipeline.train_dataset(pairs, tokenizer, lengths, config.train.batch_size,
                                           seed=0, subword_nbest=subword_nbest,
                                           subword_alpha=alpha))
    if subword_nbest > 1:  # steady state, as after the first epoch: every word's n-best known
        rng = np.random.default_rng(0)
        for text in (t for pair in pairs for t in pair):
            tokenizer.sample_encode(text, subword_nbest, alpha, rng)
    next(iterator)  # start-up (first shuffle) excluded
    start = time.perf_counter()
    examples = 0
    for _ in range(batches):
        batch = next(iterator)
        examples += int(np.sum(np.max(batch['targets_segment_ids'], axis=1)))
    seconds = (time.perf_counter() - start) / batches
    return {'step_s': seconds, 'batches_per_s': 1 / seconds,
            'examples_per_s': examples / batches / seconds, 'peak_rss_mib': peak_rss_mib()}


def deep_compile(scan_layers: bool, layers: int = 24) -> dict:
    """Compile time of the train step of a ``layers`` + ``layers`` model of base width
    (d_model 512, 8 heads), from shapes alone: unrolled against one scan per stack."""
    import dataclasses

    from transformer.compile_check import abstract_batch

    cfg = dataclasses.replace(ModelConfig.make('base', 32000, scan_layers=scan_layers),
                              num_encoder_layers=layers, num_decoder_layers=layers)
    optimizer = optim.make_optimizer(optim.rsqrt_schedule(1e-4, 100, 0), 'adam',
                                     dict(b1=0.9, b2=0.98, eps=1e-9))
    graphdef, abstract = steps.abstract_state(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)),
                                              optimizer)
    step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0)
    start = time.perf_counter()
    step.lower(abstract, abstract_batch(16, 64, 64, pack=False)).compile()
    return {'compile_s': time.perf_counter() - start, 'peak_rss_mib': peak_rss_mib()}

