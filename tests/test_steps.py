"""The train state and the jitted train step (transformer/steps.py)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, make_model, production_env, random_tokens
from transformer import input_pipeline, losses, optim, steps
from transformer.datasets import numbers_de
from transformer.tokenizer import train_tokenizer


def train_state(optimizer, **model_overrides):
    """(graphdef, TrainState at step 0) of ``make_model(**model_overrides)``."""
    def make():
        return make_model(**model_overrides)
    graphdef, _ = steps.abstract_state(make, optimizer)
    return graphdef, steps.init_state(make, optimizer)


def adam(clip=None):
    return optim.make_optimizer(optim.rsqrt_schedule(3e-3, 10, 0), grad_clip_norm=clip)


def test_loss_decreases_on_a_repeated_batch(rng):
    optimizer = adam(clip=1.0)
    graphdef, state = train_state(optimizer, dropout_rate=0.1)
    step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0)
    tgt = random_tokens(rng, 8, 6, min_len=3)
    batch = {'inputs': random_tokens(rng, 8, 7, min_len=3), 'targets': tgt,
             'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}
    history = []
    for _ in range(40):
        state, sums = step(state, batch)
        history.append(float(sums['loss'] / sums['tokens']))
    assert int(state.step) == 40
    assert history[-1] < 0.5 * history[0]


def test_packed_batch_gives_each_example_the_loss_it_has_alone():
    pairs = numbers_de.make_splits(1, {'train': 300})['train']
    tokenizer = train_tokenizer((t for p in pairs for t in p), 100)
    lengths = input_pipeline.Lengths(36, 24)
    packed = next(iter(input_pipeline.train_dataset(pairs, tokenizer, lengths, 4, seed=0)))
    model = make_model(vocab_size=tokenizer.vocab_size)
    forward = jax.jit(lambda *args: model(*args))
    logits = forward(packed['inputs'], packed['decoder_inputs'], packed['inputs_segment_ids'],
                     packed['targets_segment_ids'], packed['inputs_positions'],
                     packed['targets_positions'])
    loss, _ = losses.smoothed_cross_entropy(logits, jnp.asarray(packed['targets']), 0.1)
    # Every example of the packed rows alone in a row of its own (unpacked, zero-padded).
    alone, packed_losses = {k: [] for k in ('inputs', 'decoder_inputs', 'targets')}, []
    for row in range(4):
        for segment in set(packed['targets_segment_ids'][row]) - {0}:
            in_src = packed['inputs_segment_ids'][row] == segment
            in_tgt = packed['targets_segment_ids'][row] == segment
            for key, mask, size in (('inputs', in_src, 36), ('decoder_inputs', in_tgt, 24),
                                    ('targets', in_tgt, 24)):
                alone[key].append(np.pad(packed[key][row][mask], (0, size - mask.sum())))
            packed_losses.append(float(loss[row][in_tgt].sum()))
    alone = {k: np.stack(v) for k, v in alone.items()}
    alone_loss, _ = losses.smoothed_cross_entropy(
        forward(alone['inputs'], alone['decoder_inputs']), jnp.asarray(alone['targets']), 0.1)
    alone_loss = np.sum(np.asarray(alone_loss) * (alone['targets'] != 0), axis=1)
    np.testing.assert_allclose(packed_losses, alone_loss, rtol=1e-5)
    assert len(packed_losses) > 4  # more examples than rows: rows hold several


def _repeated_batch(rng):
    tgt = random_tokens(rng, 8, 6, min_len=3)
    return {'inputs': random_tokens(rng, 8, 7, min_len=3), 'targets': tgt,
            'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}


def test_rdrop_without_dropout_takes_the_plain_step(rng):
    """Two passes with no dropout are identical: no KL, and the same update as one pass."""
    batch = _repeated_batch(rng)
    optimizer = adam()
    states = []
    for alpha in (0.0, 5.0):
        graphdef, state = train_state(optimizer, dropout_rate=0.0)
        step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1,
                                         dropout_seed=0, rdrop_alpha=alpha)
        state, sums = step(state, batch)
        states.append(state)
    assert float(sums['consistency']) == pytest.approx(0.0, abs=1e-4)
    for plain, rdrop in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
        np.testing.assert_allclose(rdrop, plain, atol=1e-6)


def test_rdrop_step_learns_and_shrinks_the_gap_between_passes(rng):
    batch = _repeated_batch(rng)
    optimizer = adam()
    graphdef, state = train_state(optimizer, dropout_rate=0.1)
    step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0,
                                     rdrop_alpha=5.0)
    summaries = []
    for _ in range(40):
        state, sums = step(state, batch)
        summaries.append(losses.summarize(sums))
    assert summaries[0]['consistency'] > 0
    assert summaries[-1]['loss'] < 0.5 * summaries[0]['loss']
    assert summaries[-1]['consistency'] < summaries[0]['consistency']


def test_gradient_accumulation_equals_one_large_batch(rng):
    tgt = random_tokens(rng, 8, 6, min_len=2)
    batch = {'inputs': random_tokens(rng, 8, 7, min_len=2), 'targets': tgt,
             'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}
    results = []
    for accum in (1, 4):
        optimizer = optax.sgd(0.1)  # linear in the gradient, unlike Adam's first step
        graphdef, state = train_state(optimizer)
        step = steps.make_train_step(graphdef, optimizer, label_smoothing=0.1,
                                         dropout_seed=0, grad_accum_steps=accum)
        state, sums = step(state, batch)
        results.append((state.params, sums))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


INIT_CHECK = """
import jax, numpy as np, optax
from flax import nnx
from transformer import steps
from transformer.model import EncoderDecoder, ModelConfig
# mini: d_model 128, whose init scale 128^-0.5 is not a power of two; every initializer
# (token table, learned positions, the output projection) in one model.
for variant in ('mini',):
    for overrides in ({'positional': 'learned', 'share_embeddings': False},):
        def make():
            return EncoderDecoder(ModelConfig.make(variant, 1000, **overrides), rngs=nnx.Rngs(0))
        jitted = steps.init_state(make, optax.adam(1e-3)).params
        eager = nnx.state(make(), nnx.Param)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f'{variant} {overrides}')
print('equal')
"""


def test_jitted_initialization_equals_the_eagerly_built_model():
    """init_state creates the parameters inside one jitted function (so that on a mesh they
    are born sharded); they equal, bit for bit, those of the model built eagerly, compiled
    as training compiles them (a subprocess without the tests' fast-compile flag)."""
    out = subprocess.run([sys.executable, '-c', INIT_CHECK], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=production_env())
    assert out.returncode == 0 and out.stdout.strip() == 'equal', out.stderr[-3000:]


def test_abstract_state_has_the_shapes_of_the_real_one():
    optimizer = adam()
    graphdef, abstract = steps.abstract_state(make_model, optimizer)
    _, state = train_state(optimizer)
    shapes = lambda tree: [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]  # noqa: E731
    assert shapes(abstract) == shapes(state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
