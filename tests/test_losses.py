"""Label-smoothed cross-entropy, its hand-written gradient and R-Drop's KL (transformer/losses.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import VOCAB
from transformer import losses


def test_label_smoothed_loss_equals_kl_to_the_smoothed_distribution(rng):
    logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
    eps = 0.1
    loss, nll = losses.smoothed_cross_entropy(logits, targets, eps)
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
        loss, nll, _ = losses.token_losses(z, targets, eps)
        return jnp.sum(w_loss * loss + w_nll * nll)

    np.testing.assert_allclose(fused(logits), reference(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(reference)(logits), atol=1e-6)
    _, _, correct = losses.token_losses(logits, targets, eps)
    np.testing.assert_array_equal(correct, jnp.argmax(logits, -1) == targets)


def test_padding_carries_no_weight(rng):
    logits = jnp.asarray(rng.normal(size=(1, 4, VOCAB)), jnp.float32)
    targets = jnp.asarray([[5, 6, 0, 0]])
    sums = losses.batch_metrics(logits, targets, 0.1)
    assert float(sums['tokens']) == 2
    trimmed = losses.batch_metrics(logits[:, :2], targets[:, :2], 0.1)
    assert float(sums['loss']) == pytest.approx(float(trimmed['loss']), rel=1e-6)


def test_consistency_kl_is_the_symmetric_kl_of_the_two_halves(rng):
    logits = jnp.asarray(rng.normal(size=(4, 3, 7)) * 2, jnp.float32)
    weights = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)
    p = np.asarray(jax.nn.softmax(logits))
    p1, p2 = p[:2], p[2:]
    kl = lambda a, b: np.sum(a * (np.log(a) - np.log(b)), -1)  # noqa: E731
    expected = np.sum(0.5 * (kl(p1, p2) + kl(p2, p1)) * np.asarray(weights))
    assert float(losses.consistency_kl(logits, weights)) == pytest.approx(expected, rel=1e-5)
    same = jnp.concatenate([logits[:2], logits[:2]])
    assert float(losses.consistency_kl(same, weights)) == pytest.approx(0.0, abs=1e-6)
