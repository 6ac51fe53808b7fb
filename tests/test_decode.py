"""Decoding (transformer/decode.py): cached greedy decoding equals argmax over full passes;
beam search against brute force; ensembles; sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import MODERN, VOCAB, Compiled, make_model, random_tokens
from transformer import decode

BOS, EOS = 2, 3


def reference_greedy(model, src, max_len):
    """Greedy decoding that re-runs the full decoder over the prefix at every step.

    ``model(src, prefix)`` -> logits [b, t, V]. The prefix is held in a [b, max_len] array
    whose positions after the current one are padding, so the full pass compiles once; the
    causal mask keeps them from changing the logits read at the current position.
    """
    full_pass = jax.jit(lambda s, p: model(s, p))
    out = np.zeros((src.shape[0], max_len), np.int32)
    done = np.zeros(src.shape[0], bool)
    prefix = np.zeros((src.shape[0], max_len), np.int32)
    prefix[:, 0] = BOS
    for i in range(max_len):
        token = np.asarray(jnp.argmax(full_pass(src, prefix)[:, i], -1))
        token = np.where(done, 0, token)
        out[:, i] = token
        done |= token == EOS
        if i + 1 < max_len:
            prefix[:, i + 1] = np.where(token == 0, EOS, token)
    return out


def test_cached_greedy_equals_full_forward_greedy(rng):
    model = make_model(seed=3)
    src = random_tokens(rng, 5, 8, min_len=2)
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, s: decode.greedy_decode(nnx.merge(graphdef, p), s, bos_id=BOS,
                                                   eos_id=EOS, max_len=10))
    got = np.asarray(fn(params, src))
    np.testing.assert_array_equal(got, reference_greedy(model, src, 10))


@pytest.mark.parametrize('architecture', ['encoder_decoder', 'decoder_only'])
def test_beams_sharing_one_source_decode_as_rows_of_their_own(rng, architecture):
    # Beam search passes each source once for its k beams (rows j*k .. j*k+k-1): every
    # row's logits equal a full pass over its source and its own target.
    prefix_lm = dict(prefix_lm=True) if architecture == 'decoder_only' else {}
    model = Compiled(make_model(architecture=architecture, **prefix_lm, **MODERN))
    beams, length = 3, 5
    src = random_tokens(rng, 2, 7, min_len=2)
    tgt = rng.integers(4, VOCAB, (2 * beams, length)).astype(np.int32)
    full = model(np.repeat(src, beams, axis=0), tgt)
    src_segments = jnp.asarray(src != 0, jnp.int32)
    cross_kv = model.cross_kv(model.encode(src, src_segments))
    cache = model.init_cache(2 * beams, length)
    for i in range(length):
        logits, cache = model.decode_step(jnp.asarray(tgt[:, i]), jnp.int32(i), cache, cross_kv,
                                          src_segments)
        np.testing.assert_allclose(logits, full[:, i], atol=1e-4)


def test_rows_that_sources_cannot_share_evenly_are_refused():
    model = make_model()
    src_segments = jnp.ones((2, 4), jnp.int32)
    cross_kv = model.cross_kv(model.encode(jnp.full((2, 4), 5), src_segments))
    with pytest.raises(ValueError, match='5 token rows cannot be shared evenly by 2 sources'):
        model.decode_step(jnp.full((5,), BOS), jnp.int32(0), model.init_cache(5, 3), cross_kv,
                          src_segments)


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


# -- beam search on hand-built scoring functions --------------------------------------------

A, B, C = 4, 5, 6
V = 7


def table_step_fn(probabilities: dict):
    """A scoring function p(next | last token) from a table {last: {next: p}}.

    Its step state counts the steps each beam has taken, so that the test can check that
    beams carry their own state when they are reordered.
    """
    table = np.full((V, V), 1e-6)
    for last, nexts in probabilities.items():
        for token, p in nexts.items():
            table[last, token] = p
    log_table = jnp.asarray(np.log(table / table.sum(1, keepdims=True)), jnp.float32)

    def step_fn(tokens, index, state):
        return log_table[tokens], state + 1
    return step_fn, np.asarray(log_table)


def brute_force_best(log_table, alpha, max_len):
    """Scores every sequence that ends in EOS within max_len tokens; returns the best."""
    best, best_score = None, -np.inf
    frontier = [((), BOS, 0.0)]
    for length in range(1, max_len + 1):
        grown = []
        for seq, last, logp in frontier:
            for token in range(3, V):
                lp = logp + log_table[last, token]
                if token == EOS:
                    score = lp / ((5 + length) / 6) ** alpha
                    if score > best_score:
                        best, best_score = seq + (token,), score
                else:
                    grown.append((seq + (token,), token, lp))
        frontier = grown
    return best, best_score


def run_beam(step_fn, beam_size, alpha, max_len, batch=1):
    state = jnp.zeros((batch * beam_size,), jnp.int32)
    tokens, scores = decode.beam_search(step_fn, state, batch=batch, beam_size=beam_size,
                                        alpha=alpha, bos_id=BOS, eos_id=EOS, max_len=max_len)
    return np.asarray(tokens), np.asarray(scores)


def strip(row):
    row = list(row)
    return tuple(row[:row.index(EOS) + 1]) if EOS in row else tuple(row)


def test_beam_search_finds_the_best_sequence_where_greedy_fails():
    # Greedy takes A (0.6) and then EOS (0.4): p = 0.24. B (0.4) leads to a near-certain
    # EOS: p = 0.396, the best sequence overall.
    step_fn, log_table = table_step_fn({BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.4, A: 0.3, C: 0.3},
                                        B: {EOS: 0.99}, C: {EOS: 1.0}})
    greedy, _ = run_beam(step_fn, 1, 0.0, 4)
    beam, score = run_beam(step_fn, 4, 0.0, 4)
    assert strip(greedy[0]) == (A, EOS)
    assert strip(beam[0]) == (B, EOS)
    best, best_score = brute_force_best(log_table, 0.0, 4)
    assert strip(beam[0]) == best and score[0] == pytest.approx(best_score, rel=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 1.0, 10.0])
def test_length_penalty_picks_what_the_formula_says(alpha):
    # A short hypothesis (A EOS, p=0.54) against longer ones (B C ... EOS, p<=0.18).
    step_fn, log_table = table_step_fn({BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.9, C: 0.1},
                                        B: {C: 0.9, EOS: 0.1}, C: {C: 0.5, EOS: 0.5}})
    tokens, scores = run_beam(step_fn, 4, alpha, 4)
    best, best_score = brute_force_best(log_table, alpha, 4)
    assert strip(tokens[0]) == best
    assert scores[0] == pytest.approx(best_score, rel=1e-5)
    if alpha == 0.0:
        assert best == (A, EOS)  # raw log-probabilities favour the short output
    if alpha == 10.0:
        assert best != (A, EOS)  # a strong penalty makes a longer one win


@pytest.mark.parametrize('width', [2000, 2048, 4 * 1000])
def test_blocked_top_k_equals_lax_top_k_ties_included(rng, width):
    # 16 to 32 blocks of 128, so every k below searches blocks; 2,000 and 4,000 leave the
    # last block part padding. Half-integers give many ties (broken by lower index).
    x = np.round(rng.normal(size=(64, width)) * 2) / 2
    x[:, ::7] = -np.inf
    x[0, :] = 1.0                                    # a whole row of ties
    x[1, -3:] = 10.0                                 # the best values in the last block
    x[2, :] = -np.inf                                # nothing finite: ties with the padding
    x[3, :] = -np.inf
    x[3, [5, 700]] = 0.0                             # fewer finite values than k
    x[4, :] = -np.linspace(100.0, 1.0, width)        # all negative, the best at the end
    for k in (1, 4, 8):
        values, indices = jax.jit(decode.top_k, static_argnums=1)(jnp.asarray(x), k)
        expected_values, expected_indices = jax.lax.top_k(jnp.asarray(x), k)
        np.testing.assert_array_equal(values, expected_values)
        np.testing.assert_array_equal(indices, expected_indices)


def test_finished_hypotheses_are_never_extended():
    step_fn, log_table = table_step_fn({BOS: {A: 0.5, EOS: 0.5}, A: {A: 0.9, EOS: 0.1}})
    tokens, scores = run_beam(step_fn, 3, 0.0, 6, batch=2)
    for row, score in zip(tokens, scores):
        assert strip(row) == (EOS,)
        assert np.all(row[1:] == 0)  # nothing after EOS
        assert score == pytest.approx(log_table[BOS, EOS], rel=1e-5)


def test_beam_size_one_equals_greedy_with_the_model(rng):
    model = make_model(seed=3)
    src = random_tokens(rng, 5, 8, min_len=2)
    graphdef, params = nnx.split(model)

    @jax.jit
    def both(p, s):
        m = nnx.merge(graphdef, p)
        greedy = decode.greedy_decode(m, s, bos_id=BOS, eos_id=EOS, max_len=10)
        beam = decode.model_beam_search(m, s, beam_size=1, alpha=0.0, bos_id=BOS, eos_id=EOS,
                                        max_len=10)
        return greedy, beam
    greedy, beam = both(params, src)
    np.testing.assert_array_equal(greedy, beam)


def test_ensemble_greedy_follows_the_mean_probability_of_full_passes(rng):
    models = [make_model(seed=3), make_model(seed=4)]
    src = random_tokens(rng, 6, 8, min_len=2)

    def mean_of_full_passes(s, prefix):  # log of the mean of the models' probabilities
        return jnp.log(sum(jax.nn.softmax(m(s, prefix), axis=-1) for m in models) / 2)

    expected = reference_greedy(mean_of_full_passes, src, 10)
    graphdefs, params = zip(*(nnx.split(m) for m in models))
    fn = jax.jit(lambda ps, s: decode.model_beam_search(
        [nnx.merge(g, p) for g, p in zip(graphdefs, ps)], s, beam_size=1, alpha=0.0,
        bos_id=BOS, eos_id=EOS, max_len=10))
    np.testing.assert_array_equal(fn(list(params), src), expected)
    for model in models:  # the ensemble is neither member alone
        assert not np.array_equal(reference_greedy(model, src, 10), expected)


def test_an_ensemble_of_one_model_twice_decodes_as_that_model(rng):
    model = make_model(seed=5)
    src = random_tokens(rng, 5, 8, min_len=2)
    graphdef, params = nnx.split(model)

    @jax.jit
    def both(p, s):
        m = nnx.merge(graphdef, p)
        kwargs = dict(beam_size=4, alpha=0.6, bos_id=BOS, eos_id=EOS, max_len=10)
        return (decode.model_beam_search(m, s, **kwargs),
                decode.model_beam_search([m, nnx.merge(graphdef, p)], s, **kwargs))
    single, ensemble = both(params, src)
    np.testing.assert_array_equal(single, ensemble)


def test_model_beam_search_respects_the_source_length_limit(rng):
    model = make_model(seed=5)
    src = random_tokens(rng, 4, 6, min_len=1)
    out = np.asarray(decode.model_beam_search(model, jnp.asarray(src), beam_size=3, alpha=0.6,
                                              bos_id=BOS, eos_id=EOS, max_len=12, length_offset=2))
    for row, src_row in zip(out, src):
        length = len(strip(row))
        assert length <= np.count_nonzero(src_row) + 2
        assert row[length - 1] == EOS


# -- sampling (the candidates of minimum-Bayes-risk decoding) -------------------------------

def sampler(model, epsilon, max_len=10):
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, s, key: decode.sample_decode(nnx.merge(graphdef, p), s, key, bos_id=BOS,
                                                        eos_id=EOS, max_len=max_len,
                                                        epsilon=epsilon))
    return lambda src, seed: np.asarray(fn(params, src, jax.random.key(seed)))


def test_sampling_is_reproducible_and_varies_with_the_key(rng):
    model = make_model(seed=3)
    src = jnp.asarray(random_tokens(rng, 6, 8, min_len=2))
    sample = sampler(model, epsilon=0.0)
    np.testing.assert_array_equal(sample(src, 0), sample(src, 0))
    assert not np.array_equal(sample(src, 0), sample(src, 1))


def test_sampling_with_a_high_epsilon_is_greedy(rng):
    # An untrained model's next-token distribution is nearly flat: no token reaches
    # probability 0.9, so only the always-kept most likely one can be drawn.
    model = make_model(seed=3)
    src = jnp.asarray(random_tokens(rng, 5, 8, min_len=2))
    greedy = decode.greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=10)
    for seed in range(3):
        np.testing.assert_array_equal(sampler(model, epsilon=0.9)(src, seed), np.asarray(greedy))


def test_samples_are_padding_after_their_eos(rng):
    model = make_model(seed=2)
    src = jnp.asarray(random_tokens(rng, 64, 8, min_len=2))
    out = sampler(model, epsilon=0.0, max_len=12)(src, 0)
    ended = 0
    for row in out:
        eos = np.flatnonzero(row == EOS)
        if eos.size:
            ended += 1
            assert np.all(row[eos[0] + 1:] == 0)
            assert np.all(row[:eos[0]] != 0)
        else:
            assert np.all(row != 0)
    assert ended > 0  # the check above ran on some rows
