"""Autoregressive decoding with the key/value cache, in one compiled loop.

The encoder runs once, the cross-attention keys and values of every decoder layer are
projected once (``EncoderDecoder.cross_kv``), and each step feeds one token through the
decoder with the self-attention cache, so a step costs O(length) instead of re-running
the whole prefix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transformer.model import PAD_ID, EncoderDecoder

Array = jax.Array


def greedy_decode(model: EncoderDecoder, src: Array, *, bos_id: int, eos_id: int,
                  max_len: int) -> Array:
    """Greedy (argmax) decoding.

    Args:
      model: a trained ``EncoderDecoder`` (used without dropout).
      src: [b, s] source token ids, 0-padded.
      bos_id, eos_id: the tokenizer's begin/end-of-sentence ids.
      max_len: the most tokens generated per row (EOS included).
    Returns:
      [b, max_len] int32 tokens; after a row's EOS the rest of the row is PAD (0).
    Call it under ``jax.jit`` (with ``model`` split/merged or as an ``nnx.jit`` argument)
    so the whole loop compiles to one ``while`` loop.
    """
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
        next_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        next_tokens = jnp.where(done, PAD_ID, next_tokens)  # finished rows emit padding
        out = out.at[:, index].set(next_tokens)
        return index + 1, next_tokens, cache, out, done | (next_tokens == eos_id)

    carry = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, cache, out, done))
    return carry[3]
