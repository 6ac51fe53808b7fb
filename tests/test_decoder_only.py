"""The decoder-only model (transformer/decoder_only.py): causality, packing, the prefix,
cached decoding, and the same decoding and training entry points as the encoder-decoder."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import MODERN, VOCAB, Compiled, assert_packing_keeps_examples_apart, make_model, random_tokens
from transformer import decode
from transformer.decoder_only import DecoderOnly, sequence_mask
from transformer.model import ModelConfig, count_params


def make(**overrides) -> DecoderOnly:
    return make_model(architecture='decoder_only', **overrides)


def test_the_mask_keeps_examples_apart_and_the_source_blind_to_the_target():
    # One row: example 1 (source 2 tokens, target 2), example 2 (source 1, target 1), padding.
    segments = jnp.array([[1, 1, 2, 0, 1, 1, 2, 0]])
    positions = jnp.array([[0, 1, 0, 0, 2, 3, 1, 0]])
    is_source = jnp.array([[True] * 4 + [False] * 4])
    for prefix_lm in (False, True):
        mask = np.asarray(sequence_mask(segments, positions, is_source, prefix_lm))[0, 0]
        same = np.asarray(segments[0, :, None] == segments[0, None, :]) & (np.asarray(segments[0]) != 0)
        assert not (mask & ~same).any()                       # nothing across examples
        assert not mask[:4, 4:].any()                         # the source never sees the target
        assert mask[4, :2].all() and mask[5, :2].all()        # the target sees its whole source
        assert mask[0, 1] == prefix_lm                        # the prefix is bidirectional


@pytest.mark.parametrize('overrides', [dict(MODERN, prefix_lm=True)])
def test_packed_rows_equal_the_examples_run_separately(rng, overrides):
    model = Compiled(make(**overrides))
    assert_packing_keeps_examples_apart(model, rng)


@pytest.mark.parametrize('overrides', [{}, dict(MODERN, prefix_lm=True, scan_layers=True)])
def test_cached_step_by_step_decoding_equals_full_forward(rng, overrides):
    """The source's keys and values come from the source alone, so this also shows that in
    training no source position attends to the target, and (each step seeing only earlier
    targets) that no logit depends on a later target."""
    model = Compiled(make(**overrides))
    src = random_tokens(rng, 3, 7, min_len=2)
    tgt = rng.integers(4, VOCAB, (3, 6)).astype(np.int32)
    full = model(src, tgt)
    src_segments = jnp.asarray(src != 0, jnp.int32)
    prompt = model.cross_kv(model.encode(src, src_segments))
    cache = model.init_cache(3, 6)
    for i in range(6):
        logits, cache = model.decode_step(jnp.asarray(tgt[:, i]), jnp.int32(i), cache, prompt,
                                          src_segments)
        np.testing.assert_allclose(logits, full[:, i], atol=1e-4)


def test_beam_search_and_greedy_decode_a_decoder_only_model(rng):
    model = make(prefix_lm=True)
    src = jnp.asarray(random_tokens(rng, 2, 5, min_len=2))
    greedy = decode.greedy_decode(model, src, bos_id=1, eos_id=2, max_len=6)
    beam = decode.model_beam_search(model, src, beam_size=1, alpha=0.0, bos_id=1, eos_id=2,
                                    max_len=6)
    np.testing.assert_array_equal(np.asarray(beam), np.asarray(greedy))  # beam 1 is greedy


def test_one_stack_of_both_depths_without_cross_attention():
    cfg = ModelConfig.make('base', 37000, architecture='decoder_only')
    count = count_params(nnx.eval_shape(lambda: DecoderOnly(cfg, rngs=nnx.Rngs(0))))
    d, ff = 512, 2048
    layer = (4 * d * d + 3 * d) + (2 * d * ff + ff + d) + 2 * 2 * d
    assert count == 37000 * d + 12 * layer
    with pytest.raises(ValueError, match="model.prefix_lm=True is invalid: a prefix is a "
                                         "decoder-only notion"):
        ModelConfig.make('tiny', VOCAB, prefix_lm=True)
    with pytest.raises(NotImplementedError, match='no cross-attention'):
        make().cross_attention_weights(jnp.ones((1, 3), jnp.int32), jnp.ones((1, 2), jnp.int32))
