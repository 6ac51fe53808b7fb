"""Loss, schedule and train step: the math matches its definition and training learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import VOCAB, make_model, random_tokens
from transformer import train_lib


def test_label_smoothed_loss_equals_kl_to_the_smoothed_distribution(rng):
    logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
    eps = 0.1
    loss, nll = train_lib.smoothed_cross_entropy(logits, targets, eps)
    q = np.full((2, 3, 7), eps / 6)
    np.put_along_axis(q, np.asarray(targets)[..., None], 1 - eps, axis=-1)
    log_p = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(loss, np.sum(q * (np.log(q) - log_p), -1), rtol=1e-5)
    np.testing.assert_allclose(nll, -np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0],
                               rtol=1e-6)


def test_fused_loss_gradient_equals_autodiff_of_the_definition(rng):
    """token_losses' hand-written backward pass against jax.grad of the textbook formula."""
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)))
    w_loss, w_nll = (jnp.asarray(rng.normal(size=(2, 5)), jnp.float32) for _ in range(2))
    eps = 0.1

    def reference(z):
        log_p = jax.nn.log_softmax(z)
        q = jnp.where(jax.nn.one_hot(targets, 11) > 0, 1 - eps, eps / 10)
        loss = jnp.sum(q * (jnp.log(q) - log_p), -1)
        nll = -jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0]
        return jnp.sum(w_loss * loss + w_nll * nll)

    def fused(z):
        loss, nll, _ = train_lib.token_losses(z, targets, eps)
        return jnp.sum(w_loss * loss + w_nll * nll)

    np.testing.assert_allclose(fused(logits), reference(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(reference)(logits), atol=1e-6)
    _, _, correct = train_lib.token_losses(logits, targets, eps)
    np.testing.assert_array_equal(correct, jnp.argmax(logits, -1) == targets)


def test_schedule_equals_the_paper_formula_with_its_implied_peak():
    d_model, warmup = 512, 4000
    schedule = train_lib.learning_rate_schedule((d_model * warmup) ** -0.5, warmup)
    for step in (1, 100, 3999, 4000, 4001, 20000, 100000):
        paper = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
        assert float(schedule(step - 1)) == pytest.approx(paper, rel=1e-5)


def test_linear_schedule_warms_up_then_reaches_zero_at_the_last_step():
    schedule = train_lib.learning_rate_schedule(1e-3, 100, 'linear', total_steps=1100)
    values = {step: float(schedule(step - 1)) for step in (1, 50, 100, 600, 1100, 1200)}
    assert values[1] == pytest.approx(1e-5) and values[50] == pytest.approx(5e-4)
    assert values[100] == pytest.approx(1e-3) and values[600] == pytest.approx(5e-4)
    assert values[1100] == 0.0 and values[1200] == 0.0
    with pytest.raises(ValueError, match='cosine'):
        train_lib.learning_rate_schedule(1e-3, 100, 'cosine')


def test_padding_carries_no_weight(rng):
    logits = jnp.asarray(rng.normal(size=(1, 4, VOCAB)), jnp.float32)
    targets = jnp.asarray([[5, 6, 0, 0]])
    sums = train_lib.batch_metrics(logits, targets, 0.1)
    assert float(sums['tokens']) == 2
    trimmed = train_lib.batch_metrics(logits[:, :2], targets[:, :2], 0.1)
    assert float(sums['loss']) == pytest.approx(float(trimmed['loss']), rel=1e-6)


@pytest.mark.parametrize('clip', [None, 1.0])
def test_loss_decreases_on_a_repeated_batch(rng, clip):
    model = make_model(dropout_rate=0.1)
    optimizer = train_lib.make_optimizer(3e-3, 10, grad_clip_norm=clip)
    graphdef, state = train_lib.init_state(model, optimizer)
    step = train_lib.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0)
    tgt = random_tokens(rng, 8, 6, min_len=3)
    batch = {'inputs': random_tokens(rng, 8, 7, min_len=3), 'targets': tgt,
             'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}
    losses = []
    for _ in range(40):
        state, sums = step(state, batch)
        losses.append(float(sums['loss'] / sums['tokens']))
    assert int(state.step) == 40
    assert losses[-1] < 0.5 * losses[0]


def test_packed_batch_gives_each_example_the_loss_it_has_alone():
    from transformer import data, numbers_de
    pairs = numbers_de.make_splits(1, {'train': 300})['train']
    tokenizer = data.train_tokenizer((t for p in pairs for t in p), 100)
    packed = next(iter(data.train_dataset(pairs, tokenizer, data.Lengths(36, 24), 4, seed=0)))
    model = make_model(vocab_size=tokenizer.vocab_size)
    logits = model(packed['inputs'], packed['decoder_inputs'], packed['inputs_segment_ids'],
                   packed['targets_segment_ids'], packed['inputs_positions'],
                   packed['targets_positions'])
    loss, _ = train_lib.smoothed_cross_entropy(logits, jnp.asarray(packed['targets']), 0.1)
    checked = 0
    for row in range(4):
        for segment in set(packed['targets_segment_ids'][row]) - {0}:
            src = packed['inputs'][row][packed['inputs_segment_ids'][row] == segment][None]
            in_tgt = packed['targets_segment_ids'][row] == segment
            dec = packed['decoder_inputs'][row][in_tgt][None]
            tgt = packed['targets'][row][in_tgt][None]
            alone_loss, _ = train_lib.smoothed_cross_entropy(model(src, dec), jnp.asarray(tgt), 0.1)
            np.testing.assert_allclose(float(loss[row][in_tgt].sum()), float(alone_loss.sum()),
                                       rtol=1e-5)
            checked += 1
    assert checked > 4  # more examples than rows: rows hold several


def test_consistency_kl_is_the_symmetric_kl_of_the_two_halves(rng):
    logits = jnp.asarray(rng.normal(size=(4, 3, 7)) * 2, jnp.float32)
    weights = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)
    p = np.asarray(jax.nn.softmax(logits))
    p1, p2 = p[:2], p[2:]
    kl = lambda a, b: np.sum(a * (np.log(a) - np.log(b)), -1)  # noqa: E731
    expected = np.sum(0.5 * (kl(p1, p2) + kl(p2, p1)) * np.asarray(weights))
    assert float(train_lib.consistency_kl(logits, weights)) == pytest.approx(expected, rel=1e-5)
    same = jnp.concatenate([logits[:2], logits[:2]])
    assert float(train_lib.consistency_kl(same, weights)) == pytest.approx(0.0, abs=1e-6)


def _repeated_batch(rng):
    tgt = random_tokens(rng, 8, 6, min_len=3)
    return {'inputs': random_tokens(rng, 8, 7, min_len=3), 'targets': tgt,
            'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}


def test_rdrop_without_dropout_takes_the_plain_step(rng):
    """Two passes with no dropout are identical: no KL, and the same update as one pass."""
    batch = _repeated_batch(rng)
    optimizer = train_lib.make_optimizer(3e-3, 10)
    states = []
    for alpha in (0.0, 5.0):
        graphdef, state = train_lib.init_state(make_model(dropout_rate=0.0), optimizer)
        step = train_lib.make_train_step(graphdef, optimizer, label_smoothing=0.1,
                                         dropout_seed=0, rdrop_alpha=alpha)
        state, sums = step(state, batch)
        states.append(state)
    assert float(sums['consistency']) == pytest.approx(0.0, abs=1e-4)
    for plain, rdrop in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
        np.testing.assert_allclose(rdrop, plain, atol=1e-6)


def test_rdrop_step_learns_and_shrinks_the_gap_between_passes(rng):
    batch = _repeated_batch(rng)
    optimizer = train_lib.make_optimizer(3e-3, 10)
    graphdef, state = train_lib.init_state(make_model(dropout_rate=0.1), optimizer)
    step = train_lib.make_train_step(graphdef, optimizer, label_smoothing=0.1, dropout_seed=0,
                                     rdrop_alpha=5.0)
    summaries = []
    for _ in range(40):
        state, sums = step(state, batch)
        summaries.append(train_lib.summarize(sums))
    assert summaries[0]['consistency'] > 0
    assert summaries[-1]['loss'] < 0.5 * summaries[0]['loss']
    assert summaries[-1]['consistency'] < summaries[0]['consistency']


def test_rdrop_without_any_dropout_is_refused():
    from configs import default
    from transformer import config_lib
    config = default.get_config()
    config.model.dropout_rate = 0.0
    config.train.rdrop_alpha = 5.0
    with pytest.raises(config_lib.ConfigError, match='config.train.rdrop_alpha=5.0.*dropout'):
        config_lib.validate(config)
    config.model.attention_dropout = 0.1
    config_lib.validate(config)
    config.model.attention_dropout = 0.0
    config.model.token_dropout = 0.1
    config_lib.validate(config)
