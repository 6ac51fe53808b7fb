"""The training objective: label-smoothed cross-entropy (section 5.4), R-Drop's consistency
term, and the per-batch metric sums the train and eval steps report.

Losses are summed over real (non-padding) target tokens; the step divides by the token
count, so every token weighs the same however the batch is packed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from transformer.tokenizer import PAD_ID


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array,
                           label_smoothing: float) -> tuple[jax.Array, jax.Array]:
    """Per-token label-smoothed cross-entropy (section 5.4) and plain negative log-likelihood.

    The smoothed target puts 1 - eps on the true token and spreads eps uniformly over the
    other V - 1 tokens. Its entropy is subtracted, so a perfect prediction of the smoothed
    distribution scores 0 and the numbers read like a KL divergence.

    Args:
      logits: [b, t, V] float32.  targets: [b, t] int.
    Returns:
      (loss, nll), each [b, t].
    """
    loss, nll, _ = token_losses(logits, targets, label_smoothing)
    return loss, nll


def _smoothing(vocab: int, label_smoothing: float) -> tuple[float, float, float]:
    """(probability on the target, on each other token, entropy of that distribution)."""
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
    return confidence, low, entropy


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_losses(logits: jax.Array, targets: jax.Array, label_smoothing: float):
    """(loss, nll, correct), each [b, t], from logits [b, t, V] and targets [b, t].

    ``loss`` and ``nll`` are those of ``smoothed_cross_entropy``; ``correct`` is 1.0 where
    the target has the highest logit (a tie counts as correct), without a gradient.

    Written out with its own gradient, softmax(z) - q for the loss and softmax(z) - onehot
    for the NLL, because autodiff of log_softmax + take_along_axis materialises the
    one-hot target, a scatter and log-probabilities as separate [b, t, V] arrays: on a CPU
    that was ~30% of a small model's train step with a 4,000-token vocabulary. Here the
    forward pass reads the logits twice (max, then exp-sum) and the backward pass is one
    elementwise loop.
    """
    return _token_losses_fwd(logits, targets, label_smoothing)[0]


@jax.named_scope('loss')
def _token_losses_fwd(logits, targets, label_smoothing):
    logits = logits.astype(jnp.float32)
    confidence, low, entropy = _smoothing(logits.shape[-1], label_smoothing)
    top = jnp.max(logits, axis=-1, keepdims=True)                                  # [b, t, 1]
    log_z = top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))  # [b, t, 1]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)       # [b, t, 1]
    nll = (log_z - target_logit)[..., 0]
    # sum_v q(v) (-log p(v)) with q = low everywhere except `confidence` at the target.
    sum_log_probs = jnp.sum(logits - log_z, axis=-1)
    loss = confidence * nll - low * (sum_log_probs + nll) - entropy
    correct = (target_logit >= top)[..., 0].astype(jnp.float32)
    return (loss, nll, correct), (logits, log_z, targets)


@jax.named_scope('loss')
def _token_losses_bwd(label_smoothing, residuals, cotangents):
    logits, log_z, targets = residuals
    d_loss, d_nll, _ = cotangents                                                  # [b, t] each
    confidence, low, _ = _smoothing(logits.shape[-1], label_smoothing)
    probs = jnp.exp(logits - log_z)                                                # [b, t, V]
    is_target = jnp.arange(logits.shape[-1]) == targets[..., None]                 # [b, t, V]
    d_loss, d_nll = d_loss[..., None], d_nll[..., None]
    # d loss / dz = p - q and d nll / dz = p - onehot, both because q and onehot sum to 1.
    grad = (d_loss + d_nll) * probs - jnp.where(is_target, confidence * d_loss + d_nll,
                                                low * d_loss)
    return grad, None


token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


def batch_metrics(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> dict:
    """Sums over non-padding target tokens: loss, nll, correct (argmax == target), tokens."""
    weights = (targets != PAD_ID).astype(jnp.float32)
    loss, nll, correct = token_losses(logits, targets, label_smoothing)
    return {'loss': jnp.sum(loss * weights), 'nll': jnp.sum(nll * weights),
            'correct': jnp.sum(correct * weights), 'tokens': jnp.sum(weights)}


def consistency_kl(logits: jax.Array, weights: jax.Array) -> jax.Array:
    """Summed symmetric KL between two dropout passes over the same tokens (R-Drop).

    Args:
      logits: [2b, t, V]; rows i and b + i are the same example under different dropout.
      weights: [b, t], 1.0 on real target tokens.
    Returns:
      scalar: sum over tokens of (KL(p1 || p2) + KL(p2 || p1)) / 2.
    """
    first, second = jnp.split(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 2)
    # KL(p1 || p2) + KL(p2 || p1) = sum_v (p1 - p2) (log p1 - log p2).
    per_token = jnp.sum((jnp.exp(first) - jnp.exp(second)) * (first - second), axis=-1)
    return 0.5 * jnp.sum(per_token * weights)


def summarize(sums: dict) -> dict[str, float]:
    """Token-summed metrics -> per-token means: loss, nll, perplexity, accuracy (%), and
    with R-Drop the mean symmetric KL between the two passes (``consistency``)."""
    tokens = max(float(sums['tokens']), 1.0)
    nll = float(sums['nll']) / tokens
    summary = {'loss': float(sums['loss']) / tokens, 'nll': nll,
               'perplexity': float(jnp.exp(jnp.minimum(nll, 50.0))),
               'accuracy': 100.0 * float(sums['correct']) / tokens}
    if 'consistency' in sums:  # summed once per pair of passes, tokens counted twice
        summary['consistency'] = 2.0 * float(sums['consistency']) / tokens
    return summary


def cross_entropy_objective(forward, batch: dict, label_smoothing: float):
    """(summed label-smoothed loss, metric sums) of ``forward(batch)`` -> logits [b, t, V]."""
    sums = batch_metrics(forward(batch), batch['targets'], label_smoothing)
    return sums['loss'], sums


def rdrop_objective(forward, batch: dict, label_smoothing: float, alpha: float):
    """R-Drop (Liang et al., 2021): the batch goes through ``forward`` twice, under different
    dropout masks, and the loss adds ``alpha`` times the symmetric KL between the two
    predictions (``consistency_kl``) to the cross-entropy of both passes.

    The step costs about twice as much; the metric sums count both passes and gain
    ``consistency``.
    """
    twice = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)
    logits = forward(twice)                                                  # [2b, t, V]
    sums = batch_metrics(logits, twice['targets'], label_smoothing)
    weights = (batch['targets'] != PAD_ID).astype(jnp.float32)
    sums['consistency'] = consistency_kl(logits, weights)
    return sums['loss'] + alpha * sums['consistency'], sums
