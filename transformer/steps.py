"""The train state and the pure, jitted train and eval steps.

The model is split once into a static ``graphdef`` and a pytree of parameters; the steps
are pure functions of (state, batch) that merge them back inside the trace, so jit sees
only arrays and Python work per step is one dispatch. The state is built one way: its
shapes from ``abstract_state`` (nothing computed), its values from ``init_state`` (one jitted
function, so on a mesh each array is created already split over its devices).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from transformer import losses

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data-iterator state."""
    step: jax.Array        # [] int32, optimizer updates applied so far
    params: nnx.State      # the model's nnx.Param variables
    opt_state: Any         # optax state


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

    With ``rdrop_alpha`` > 0 the objective is R-Drop's (``losses.rdrop_objective``)
    instead of the label-smoothed cross-entropy alone.
    """
    base_key = jax.random.key(dropout_seed)
    objective = (functools.partial(losses.rdrop_objective, alpha=rdrop_alpha) if rdrop_alpha
                 else losses.cross_entropy_objective)

    def micro_grads(params, micro_batch, rng):
        def loss_fn(p):
            return objective(lambda b: _forward(graphdef, p, b, rng), micro_batch, label_smoothing)
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
        with jax.named_scope('optimizer'):
            grads = jax.tree.map(lambda g: g / jnp.maximum(sums['tokens'], 1.0), grads)
            # Counts updates whose loss or gradient was NaN/inf; the loop stops before saving.
            sums['nonfinite'] = (~jnp.isfinite(sums['loss'] + optax.tree.norm(grads))
                                 ).astype(jnp.float32)
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
        return losses.batch_metrics(logits, batch['targets'], label_smoothing)
    return _jit(eval_step, params_sharding, batch_sharding)


def abstract_state(make_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation):
    """(graphdef, TrainState of ``jax.ShapeDtypeStruct`` leaves): shapes only, nothing computed.

    ``make_model`` builds the model (e.g. ``lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0))``).
    The parameters keep their nnx metadata (``logical_axes``), from which
    ``sharding.state_shardings`` places them.
    """
    graphdef, params = nnx.split(nnx.eval_shape(make_model), nnx.Param)
    return graphdef, TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                                opt_state=jax.eval_shape(optimizer.init, params))


def init_state(make_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation,
               shardings=None) -> TrainState:
    """The TrainState at step 0: the model's initial parameters and the optimizer's state.

    Computed by one jitted function; with ``shardings`` (from ``sharding.state_shardings``
    of ``abstract_state``) every array is created already split over its mesh, so no
    process ever holds a full copy of a model too large for one device.
    """
    def init():
        _, params = nnx.split(make_model(), nnx.Param)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))
    return jax.jit(init, out_shardings=shardings)()
