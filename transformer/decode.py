"""Autoregressive decoding with the key/value cache, in one compiled loop.

The encoder runs once, the cross-attention keys and values of every decoder layer are
projected once (``EncoderDecoder.cross_kv``), and each step feeds one token through the
decoder with the self-attention cache, so a step costs O(length) instead of re-running
the whole prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from transformer.model import PAD_ID, TransformerBase

Array = jax.Array


def greedy_decode(model: TransformerBase, src: Array, *, bos_id: int, eos_id: int,
                  max_len: int) -> Array:
    """Greedy (argmax) decoding.

    Args:
      model: a trained ``EncoderDecoder`` or ``DecoderOnly`` (used without dropout).
      src: [b, s] source token ids, 0-padded.
      bos_id, eos_id: the tokenizer's begin/end-of-sentence ids.
      max_len: the most tokens generated per row (EOS included).
    Returns:
      [b, max_len] int32 tokens; after a row's EOS the rest of the row is PAD (0).
    Call it under ``jax.jit`` (with ``model`` split/merged or as an ``nnx.jit`` argument)
    so the whole loop compiles to one ``while`` loop.
    """
    def pick(logits, index):
        return jnp.argmax(logits, axis=-1)
    return _token_by_token(model, src, pick, bos_id=bos_id, eos_id=eos_id, max_len=max_len)


def sample_decode(model: TransformerBase, src: Array, rng: Array, *, bos_id: int, eos_id: int,
                  max_len: int, epsilon: float = 0.02) -> Array:
    """Ancestral sampling with epsilon truncation: one sampled translation per row.

    At each step only tokens with probability >= ``epsilon`` may be drawn (always at least
    the most likely one), renormalised; epsilon 0 samples from the full distribution (PAD
    excluded).
    Truncation keeps the rare, nonsensical continuations of plain sampling out of the
    candidates that minimum-Bayes-risk decoding (``transformer/mbr.py``) chooses from.

    src: [b, s]; rng: a JAX key (the same key gives the same samples). Returns [b, max_len]
    int32 tokens, PAD after EOS, as ``greedy_decode``.
    """
    def pick(logits, index):
        # PAD marks the end of an output, so it is never drawn.
        logits = logits.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        best = jnp.max(log_probs, axis=-1, keepdims=True)
        allowed = (log_probs >= jnp.log(epsilon)) | (log_probs >= best)
        return jax.random.categorical(jax.random.fold_in(rng, index),
                                      jnp.where(allowed, log_probs, -jnp.inf), axis=-1)
    return _token_by_token(model, src, pick, bos_id=bos_id, eos_id=eos_id, max_len=max_len)


def _token_by_token(model: TransformerBase, src: Array, pick, *, bos_id: int, eos_id: int,
                    max_len: int) -> Array:
    """One token per row and step, chosen by ``pick(logits [b, V], index) -> [b]``."""
    batch = src.shape[0]
    src_segments = (src != PAD_ID).astype(jnp.int32)
    cross_kv = model.cross_kv(model.encode(src, src_segments))
    cache = model.init_cache(batch, max_len)
    out = jnp.zeros((batch, max_len), jnp.int32)
    tokens = jnp.full((batch,), bos_id, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(carry):
        index, _, _, _, done = carry
        return (index < max_len) & ~jnp.all(done)

    def body(carry):
        index, tokens, cache, out, done = carry
        logits, cache = model.decode_step(tokens, index, cache, cross_kv, src_segments)
        next_tokens = pick(logits, index).astype(jnp.int32)
        next_tokens = jnp.where(done, PAD_ID, next_tokens)  # finished rows emit padding
        out = out.at[:, index].set(next_tokens)
        return index + 1, next_tokens, cache, out, done | (next_tokens == eos_id)

    carry = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, cache, out, done))
    return carry[3]


def length_penalty(length: Array, alpha: float) -> Array:
    """GNMT length penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha.

    Beam scores are log-probabilities divided by this; alpha = 0 compares raw
    log-probabilities (favouring short outputs), larger alpha favours longer ones.
    """
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def top_k(x: Array, k: int, block: int = 128) -> tuple[Array, Array]:
    """``jax.lax.top_k`` over the last axis of x [b, n] (no NaN) -> (values, indices), each
    [b, k], for n much larger than k (beam search's k x vocabulary candidates). On a CPU,
    where XLA's TopK takes ~2 ns per element, it is about 10x faster.

    The row is cut into blocks of ``block``; only the k blocks with the largest maxima are
    searched. Order the elements by value, then by lower index (as ``jax.lax.top_k`` breaks
    ties). Blocks are contiguous, so ordering them by (maximum, lower block index) orders
    them by their best elements. A block's best element ranks at or above any element of
    the top k it holds, and only a block whose best element is itself one of the top k can
    rank that high: at most k blocks. So the k best blocks hold the whole top k, and
    searching them in index order returns exactly what ``jax.lax.top_k`` does, ties
    included. (A NaN would break the first step: ``jnp.max`` and ``jax.lax.top_k`` rank it
    differently.)
    """
    b, n = x.shape
    count = -(-n // block)
    if count <= k:
        return jax.lax.top_k(x, k)
    padded = jnp.pad(x, ((0, 0), (0, count * block - n)), constant_values=-jnp.inf)
    blocks = padded.reshape(b, count, block)
    _, best_blocks = jax.lax.top_k(jnp.max(blocks, -1), k)                     # [b, k]
    best_blocks = jnp.sort(best_blocks, -1)
    candidates = jnp.take_along_axis(blocks, best_blocks[:, :, None], 1)      # [b, k, block]
    values, where = jax.lax.top_k(candidates.reshape(b, k * block), k)
    return values, jnp.take_along_axis(best_blocks, where // block, 1) * block + where % block


def _select(x: Array, indices: Array) -> Array:
    """x [b, n, ...], indices [b, m] -> x[row, indices[row]] as [b, m, ...]."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _select_beams(tree, indices: Array):
    """Reorders beams in every leaf [b * k, ...] of ``tree`` by indices [b, k]."""
    batch = indices.shape[0]

    def select(x):
        return _select(x.reshape(batch, -1, *x.shape[1:]), indices).reshape(x.shape)
    return jax.tree.map(select, tree)


def beam_search(step_fn, step_state, *, batch: int, beam_size: int, alpha: float, bos_id: int,
                eos_id: int, max_len: int, row_limits: Array | None = None):
    """Batched beam search with the GNMT length penalty.

    Args:
      step_fn: ``(tokens [b*k], index, step_state) -> (log_probs [b*k, V], step_state)``:
        scores the next token given the last one; ``step_state`` is any pytree whose leaves
        have leading dimension b*k (e.g. the decoder's self-attention cache); beams are
        reordered by gathering along it.
      step_state: the initial state, already repeated for each beam.
      beam_size: k.  alpha: length-penalty exponent.
      max_len: the most tokens per hypothesis (EOS included).
      row_limits: optional [b] int, a per-row maximum length (<= max_len), e.g. tied to the
        source length; a hypothesis reaching it must end with EOS. Without it a row whose
        hypotheses all run to max_len returns its best unfinished one (as greedy does).
    Returns:
      (tokens [b, max_len] int32, 0-padded after EOS; scores [b] = log p / penalty).

    A hypothesis that emits EOS moves to the finished set and is never extended. The search
    stops when no alive hypothesis can still beat the worst finished one of every row.
    """
    k, neg_inf = beam_size, -1e9
    limits = jnp.full((batch,), max_len) if row_limits is None else jnp.minimum(row_limits, max_len)
    # Only beam 0 is live at the start: the k beams are identical copies.
    alive_logp = jnp.tile(jnp.array([0.0] + [neg_inf] * (k - 1), jnp.float32), (batch, 1))
    init = dict(index=jnp.int32(0),
                tokens=jnp.full((batch * k,), bos_id, jnp.int32),
                alive_seqs=jnp.zeros((batch, k, max_len), jnp.int32),
                alive_logp=alive_logp,
                finished_seqs=jnp.zeros((batch, k, max_len), jnp.int32),
                finished_scores=jnp.full((batch, k), neg_inf, jnp.float32),
                state=step_state)

    def cond(c):
        # Log-probabilities only fall, so an alive beam's best final score is its current
        # log-probability under the largest penalty it can still get.
        best_alive = c['alive_logp'][:, 0] / length_penalty(limits, alpha)
        worst_finished = c['finished_scores'][:, -1]
        can_improve = (c['alive_logp'][:, 0] > neg_inf / 2) & (best_alive > worst_finished)
        return (c['index'] < max_len) & jnp.any(can_improve)

    def body(c):
        i = c['index']
        log_probs, state = step_fn(c['tokens'], i, c['state'])
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, k, vocab)
        if row_limits is not None:  # at a row's length limit only EOS may follow
            at_limit = (i + 1 >= limits)[:, None, None]
            log_probs = jnp.where(at_limit & (jnp.arange(vocab) != eos_id), neg_inf, log_probs)
        candidates = (c['alive_logp'][:, :, None] + log_probs).reshape(batch, k * vocab)
        # The k best continuations; those ending in EOS leave the beam (which shrinks
        # until the next step refills it), so beam size 1 is exactly greedy decoding.
        top_logp, top_index = top_k(candidates, k)
        beam_of, token_of = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        seqs = _select(c['alive_seqs'], beam_of)
        seqs = seqs.at[:, :, i].set(token_of)
        ends = token_of == eos_id

        # Finished: merge the old finished set with the candidates that just ended.
        new_scores = jnp.where(ends & (top_logp > neg_inf / 2),
                               top_logp / length_penalty(i + 1, alpha), neg_inf)
        all_scores = jnp.concatenate([c['finished_scores'], new_scores], axis=1)
        all_seqs = jnp.concatenate([c['finished_seqs'], seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(all_scores, k)
        finished_seqs = _select(all_seqs, keep)

        # Alive: the candidates that did not end, best first; ended slots become dead
        # (log-probability -1e9), which no real continuation loses to.
        alive_logp, keep = jax.lax.top_k(jnp.where(ends, neg_inf, top_logp), k)
        alive_seqs = _select(seqs, keep)
        parent = jnp.take_along_axis(beam_of, keep, axis=1)
        tokens = jnp.take_along_axis(token_of, keep, axis=1).reshape(batch * k)
        return dict(index=i + 1, tokens=tokens, alive_seqs=alive_seqs, alive_logp=alive_logp,
                    finished_seqs=finished_seqs, finished_scores=finished_scores,
                    state=_select_beams(state, parent))

    c = jax.lax.while_loop(cond, body, init)
    # A row with no finished hypothesis (possible only without row limits) returns its
    # best alive one.
    has_finished = c['finished_scores'][:, 0] > neg_inf / 2
    alive_score = c['alive_logp'][:, 0] / length_penalty(limits, alpha)
    tokens = jnp.where(has_finished[:, None], c['finished_seqs'][:, 0], c['alive_seqs'][:, 0])
    return tokens, jnp.where(has_finished, c['finished_scores'][:, 0], alive_score)


def model_beam_search(model: TransformerBase | Sequence[TransformerBase], src: Array, *,
                      beam_size: int, alpha: float, bos_id: int, eos_id: int, max_len: int,
                      length_offset: int | None = None) -> Array:
    """Beam search with a trained model, or an ensemble: src [b, s] -> tokens [b, max_len].

    The encoder and the cross-attention projections run once per source sentence; each
    step runs the decoder on one token per beam with the self-attention cache. With
    ``length_offset`` a row may be at most (its source length + offset) tokens long.

    Given a sequence of models (which must share one vocabulary), each step scores a token
    by the log of the models' mean probability, log((p_1 + ... + p_n) / n): an ensemble,
    each member with its own encoder output and cache.
    """
    models = [model] if isinstance(model, TransformerBase) else list(model)
    if not models:
        raise ValueError('model_beam_search needs at least one model')
    batch = src.shape[0]
    src_segments = (src != PAD_ID).astype(jnp.int32)

    # One copy of each source's encoding serves its k beams (``decode_step`` takes b
    # sources for b * k rows).
    cross_kvs = [m.cross_kv(m.encode(src, src_segments)) for m in models]
    state = tuple(m.init_cache(batch * beam_size, max_len) for m in models)

    def step_fn(tokens, index, caches):
        log_probs, new_caches = [], []
        for m, cross_kv, cache in zip(models, cross_kvs, caches):
            logits, cache = m.decode_step(tokens, index, cache, cross_kv, src_segments)
            log_probs.append(jax.nn.log_softmax(logits, axis=-1))
            new_caches.append(cache)
        if len(models) == 1:
            return log_probs[0], tuple(new_caches)
        mean = jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(float(len(models)))
        return mean, tuple(new_caches)

    limits = None
    if length_offset is not None:
        limits = jnp.sum(src_segments, axis=1) + length_offset
    tokens, _ = beam_search(step_fn, state, batch=batch, beam_size=beam_size, alpha=alpha,
                            bos_id=bos_id, eos_id=eos_id, max_len=max_len, row_limits=limits)
    return tokens
