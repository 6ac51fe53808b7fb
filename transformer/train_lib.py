"""Loss, optimizer, learning-rate schedule and the pure, jitted train and eval steps.

The model is split once into a static ``graphdef`` and a pytree of parameters; the steps
are pure functions of (state, batch) that merge them back inside the trace, so jit sees
only arrays and Python work per step is one dispatch.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from transformer.model import PAD_ID

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data-iterator state."""
    step: jax.Array        # [] int32, optimizer updates applied so far
    params: nnx.State      # the model's nnx.Param variables
    opt_state: Any         # optax state


SCHEDULES = ('rsqrt', 'linear')


def learning_rate_schedule(peak: float, warmup_steps: int, decay: str = 'rsqrt',
                           total_steps: int = 0):
    """Linear warmup to ``peak``, then ``decay``.

    'rsqrt' is the paper's schedule (section 5.3) with its peak made explicit: lr(step) =
    peak * min(step / warmup, sqrt(warmup / step)). The paper's d_model^-0.5 *
    min(step^-0.5, step * warmup^-1.5) is this with peak = (d_model * warmup)^-0.5.
    'linear' decays linearly from the peak to zero at ``total_steps``: for a run whose
    length is fixed in advance, ending at a small learning rate does what averaging the
    last checkpoints does, and more.
    """
    if decay not in SCHEDULES:
        raise ValueError(f'Unknown learning-rate decay {decay!r}; valid: {SCHEDULES}')
    if decay == 'linear' and total_steps <= warmup_steps:
        raise ValueError(f'linear decay needs total_steps={total_steps} > warmup_steps={warmup_steps}')

    def schedule(count):
        step = jnp.maximum(count + 1, 1).astype(jnp.float32)  # optax counts from 0
        warmup = jnp.float32(max(warmup_steps, 1))
        if decay == 'rsqrt':
            after = jnp.sqrt(warmup / step)
        else:
            after = jnp.maximum(total_steps - step, 0.0) / (total_steps - warmup)
        return peak * jnp.minimum(step / warmup, after)
    return schedule


def make_optimizer(learning_rate: float, warmup_steps: int, *, decay: str = 'rsqrt',
                   total_steps: int = 0, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
    """Adam with the paper's betas and epsilon, after optional global-norm clipping.

    The clipping stage is always present (an infinite norm when disabled), so the optimizer
    state has one structure and a run can be resumed with clipping switched on or off.
    """
    schedule = learning_rate_schedule(learning_rate, warmup_steps, decay, total_steps)
    adam = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm or float('inf')), adam)


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


def _forward(graphdef, params, batch: Batch, dropout_rng):
    model = nnx.merge(graphdef, params)
    return model(batch['inputs'], batch['decoder_inputs'],
                 batch.get('inputs_segment_ids'), batch.get('targets_segment_ids'),
                 batch.get('inputs_positions'), batch.get('targets_positions'),
                 dropout_rng=dropout_rng)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, *,
                    label_smoothing: float, dropout_seed: int, grad_accum_steps: int = 1,
                    rdrop_alpha: float = 0.0, state_sharding=None,
                    batch_sharding: NamedSharding | None = None):
    """Returns ``train_step(state, batch) -> (state, metric sums)``, jitted.

    With ``grad_accum_steps`` = n > 1 the batch's rows are split into n micro-batches whose
    gradients are summed in a ``lax.scan`` before one optimizer update: the update equals
    that of the whole batch at once (the loss is normalised by the batch's total target
    tokens), using the memory of one micro-batch. Row i goes to micro-batch i mod n, so
    every device keeps an equal share of each micro-batch. The dropout key is derived from
    (seed, step, micro-batch), so it needs no state of its own and a resumed run draws
    exactly the masks an uninterrupted one would have. ``state`` is donated.

    With ``state_sharding`` (from ``sharding.state_shardings``) and ``batch_sharding`` the
    step is compiled for their mesh: inputs and outputs keep those shardings, and the
    metric sums come back replicated. Without them it runs on the default device.

    With ``rdrop_alpha`` > 0 (R-Drop, Liang et al. 2021) every example goes through the
    model twice under different dropout masks, and the loss adds ``rdrop_alpha`` times the
    symmetric KL between the two predictions (``consistency_kl``) to the cross-entropy of
    both passes. The step costs about twice as much; the metric sums count both passes.
    """
    base_key = jax.random.key(dropout_seed)

    def micro_grads(params, micro_batch, rng):
        def loss_fn(p):
            if not rdrop_alpha:
                logits = _forward(graphdef, p, micro_batch, rng)
                sums = batch_metrics(logits, micro_batch['targets'], label_smoothing)
                return sums['loss'], sums
            twice = jax.tree.map(lambda x: jnp.concatenate([x, x]), micro_batch)
            logits = _forward(graphdef, p, twice, rng)                 # [2b, t, V]
            sums = batch_metrics(logits, twice['targets'], label_smoothing)
            weights = (micro_batch['targets'] != PAD_ID).astype(jnp.float32)
            sums['consistency'] = consistency_kl(logits, weights)
            return sums['loss'] + rdrop_alpha * sums['consistency'], sums
        return jax.grad(loss_fn, has_aux=True)(params)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        micro = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps,
                                *x.shape[1:]).swapaxes(0, 1), batch)

        def accumulate(carry, inputs):
            index, micro_batch = inputs
            grads, sums = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, (state.params, _empty_sums(
            ('consistency',) if rdrop_alpha else ())))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums['tokens'], 1.0), grads)
        # Counts updates whose loss or gradient was NaN/inf; the loop stops before saving.
        sums['nonfinite'] = (~jnp.isfinite(sums['loss'] + optax.tree.norm(grads))).astype(jnp.float32)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums

    return _jit(train_step, state_sharding, batch_sharding, sharded_output=state_sharding,
                donate_argnums=0)


def _jit(fn, first_sharding, batch_sharding: NamedSharding | None, *, sharded_output=None,
         **kwargs):
    """``jax.jit(fn)`` for ``fn(first, batch)``; on a mesh, with explicit shardings.

    On a mesh the outputs are ``sharded_output`` (if given) followed by the metric sums,
    replicated; calls run inside the mesh's context, where activation constraints apply.
    """
    if batch_sharding is None:
        return jax.jit(fn, **kwargs)
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    out = replicated if sharded_output is None else (sharded_output, replicated)
    jitted = jax.jit(fn, in_shardings=(first_sharding, batch_sharding), out_shardings=out,
                     **kwargs)

    def call(*args):
        with jax.set_mesh(batch_sharding.mesh):
            return jitted(*args)
    call.jitted = jitted  # for .lower(...).compile() without running
    return call


def _empty_sums(extra: tuple[str, ...] = ()) -> dict:
    return {name: jnp.zeros((), jnp.float32)
            for name in ('loss', 'nll', 'correct', 'tokens', *extra)}


def make_eval_step(graphdef, *, label_smoothing: float, params_sharding=None,
                   batch_sharding: NamedSharding | None = None):
    """Returns the jitted ``eval_step(params, batch) -> metric sums`` (no dropout)."""
    def eval_step(params, batch: Batch):
        logits = _forward(graphdef, params, batch, None)
        return batch_metrics(logits, batch['targets'], label_smoothing)
    return _jit(eval_step, params_sharding, batch_sharding)


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation):
    """Splits ``model`` into (graphdef, TrainState at step 0)."""
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    return graphdef, state
