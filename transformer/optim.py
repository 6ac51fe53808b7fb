"""Optimizers and learning-rate schedules.

The optimizer is any optax optimizer named in ``config.train.optimizer`` (e.g. 'adam',
'adamw', 'lion'), built with the keyword arguments in ``config.train.optimizer_kwargs`` and
the learning-rate schedule named in ``config.train.schedule``: changing the optimizer is a
config change. A schedule is a function in ``SCHEDULES``; adding one is one entry here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import optax

Schedule = Callable[[int], float]  # optax's update count (from 0) -> learning rate


def rsqrt_schedule(peak: float, warmup_steps: int, total_steps: int) -> Schedule:
    """The paper's schedule (section 5.3) with its peak made explicit.

    lr(step) = peak * min(step / warmup, sqrt(warmup / step)). The paper's d_model^-0.5 *
    min(step^-0.5, step * warmup^-1.5) is this with peak = (d_model * warmup)^-0.5.
    ``total_steps`` is unused: the decay does not depend on the run's length.
    """
    del total_steps

    def schedule(count):
        step = jnp.maximum(count + 1, 1).astype(jnp.float32)  # optax counts from 0
        warmup = jnp.float32(max(warmup_steps, 1))
        return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))
    return schedule


def linear_schedule(peak: float, warmup_steps: int, total_steps: int) -> Schedule:
    """Linear warmup to ``peak``, then linear decay to zero at ``total_steps``.

    For a run whose length is fixed in advance, ending at a small learning rate does what
    averaging the last checkpoints does, and more. Needs total_steps > warmup_steps.
    """
    def schedule(count):
        step = jnp.maximum(count + 1, 1).astype(jnp.float32)  # optax counts from 0
        warmup = jnp.float32(max(warmup_steps, 1))
        after = jnp.maximum(total_steps - step, 0.0) / (total_steps - warmup)
        return peak * jnp.minimum(step / warmup, after)
    return schedule


# name in config.train.schedule -> (peak, warmup_steps, total_steps) -> schedule
SCHEDULES: dict[str, Callable[[float, int, int], Schedule]] = {
    'rsqrt': rsqrt_schedule,
    'linear': linear_schedule,
}


def learning_rate_schedule(peak: float, warmup_steps: int, decay: str = 'rsqrt',
                           total_steps: int = 0) -> Schedule:
    """Linear warmup to ``peak``, then the decay named ``decay`` (a key of ``SCHEDULES``;
    ``config_lib.validate`` checks a config's)."""
    return SCHEDULES[decay](peak, warmup_steps, total_steps)


def optimizer_problem(name: str, kwargs: Mapping) -> str | None:
    """Why ``optax.<name>(learning_rate=..., **kwargs)`` cannot be built, or None if it can."""
    factory = getattr(optax, name, None)
    if not callable(factory) or name.startswith('_'):
        return f'optax has no optimizer {name!r} (e.g. adam, adamw, lion, sgd)'
    params = inspect.signature(factory).parameters
    if 'learning_rate' not in params:
        return f'optax.{name} takes no learning_rate: it is not an optimizer'
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in kwargs if k not in params and not takes_any)
    if unknown:
        valid = sorted(k for k in params if k != 'learning_rate')
        return f'optax.{name} takes no argument {", ".join(unknown)}; it takes {valid}'
    return None


def make_optimizer(learning_rate: float | Schedule, name: str = 'adam',
                   kwargs: Mapping | None = None,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
    """``optax.<name>(learning_rate, **kwargs)`` after optional global-norm clipping.

    ``optimizer_problem`` says why a name or an argument would not work (``config_lib.validate``
    asks it for a config's). The clipping stage is always present (an infinite norm when
    disabled), so the optimizer state has one structure and a run can be resumed with
    clipping switched on or off.
    """
    optimizer = getattr(optax, name)(learning_rate=learning_rate, **dict(kwargs or {}))
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm or float('inf')), optimizer)
