"""Greedy decoding: the compiled cached loop equals argmax decoding with full passes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import make_model, random_tokens
from transformer import decode

BOS, EOS = 2, 3


def reference_greedy(model, src, max_len):
    """Greedy decoding that re-runs the full decoder over the prefix at every step."""
    out = np.zeros((src.shape[0], max_len), np.int32)
    done = np.zeros(src.shape[0], bool)
    prefix = np.full((src.shape[0], 1), BOS, np.int32)
    for i in range(max_len):
        token = np.asarray(jnp.argmax(model(src, prefix)[:, -1], -1))
        token = np.where(done, 0, token)
        out[:, i] = token
        done |= token == EOS
        prefix = np.concatenate([prefix, np.where(token == 0, EOS, token)[:, None]], 1)
    return out


def test_cached_greedy_equals_full_forward_greedy(rng):
    model = make_model(seed=3)
    src = random_tokens(rng, 5, 8, min_len=2)
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, s: decode.greedy_decode(nnx.merge(graphdef, p), s, bos_id=BOS,
                                                   eos_id=EOS, max_len=10))
    got = np.asarray(fn(params, src))
    np.testing.assert_array_equal(got, reference_greedy(model, src, 10))


def test_rows_stop_after_eos(rng):
    model = make_model(seed=1)
    # Force EOS to be the argmax at every step: the last (post-LN) norm then outputs
    # exactly its bias (all ones), whose dot product with EOS's embedding row is largest.
    norm = model.decoder[-1].ff_block.norm
    norm.scale[...] = jnp.zeros_like(norm.scale[...])
    norm.bias[...] = jnp.ones_like(norm.bias[...])
    table = model.source_embed.table
    table[...] = table[...].at[EOS].set(1.0)
    src = random_tokens(rng, 3, 6)
    out = np.asarray(decode.greedy_decode(model, jnp.asarray(src), bos_id=BOS, eos_id=EOS, max_len=5))
    assert np.all(out[:, 0] == EOS) and np.all(out[:, 1:] == 0)
