"""Learning-rate schedules and optimizers by name (transformer/optim.py)."""

import jax.numpy as jnp
import optax
import pytest

from transformer import optim


def test_schedule_equals_the_paper_formula_with_its_implied_peak():
    d_model, warmup = 512, 4000
    schedule = optim.learning_rate_schedule((d_model * warmup) ** -0.5, warmup)
    for step in (1, 100, 3999, 4000, 4001, 20000, 100000):
        paper = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
        assert float(schedule(step - 1)) == pytest.approx(paper, rel=1e-5)


def test_linear_schedule_warms_up_then_reaches_zero_at_the_last_step():
    schedule = optim.learning_rate_schedule(1e-3, 100, 'linear', total_steps=1100)
    values = {step: float(schedule(step - 1)) for step in (1, 50, 100, 600, 1100, 1200)}
    assert values[1] == pytest.approx(1e-5) and values[50] == pytest.approx(5e-4)
    assert values[100] == pytest.approx(1e-3) and values[600] == pytest.approx(5e-4)
    assert values[1100] == 0.0 and values[1200] == 0.0


def test_any_optax_optimizer_by_name_with_its_arguments():
    schedule = optim.rsqrt_schedule(1e-3, 10, 0)
    params = {'w': jnp.ones(())}
    for name, kwargs in (('adam', dict(b1=0.9, b2=0.98, eps=1e-9)),
                         ('adamw', dict(b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.1)),
                         ('sgd', dict(momentum=0.9))):
        optimizer = optim.make_optimizer(schedule, name, kwargs, grad_clip_norm=1.0)
        updates, _ = optimizer.update({'w': jnp.ones(())}, optimizer.init(params), params)
        assert float(updates['w']) < 0  # a step against the gradient
    # The paper's Adam through the generic path equals optax.adam itself.
    ours = optim.make_optimizer(schedule, 'adam', dict(b1=0.9, b2=0.98, eps=1e-9))
    reference = optax.chain(optax.clip_by_global_norm(float('inf')),
                            optax.adam(schedule, b1=0.9, b2=0.98, eps=1e-9))
    grads, state_a, state_b = {'w': jnp.asarray(0.3)}, ours.init(params), reference.init(params)
    for _ in range(3):
        (a, state_a), (b, state_b) = ours.update(grads, state_a), reference.update(grads, state_b)
        assert float(a['w']) == float(b['w'])


@pytest.mark.parametrize('name,kwargs,message', [
    ('adamm', {}, "optax has no optimizer 'adamm'"),
    ('adam', {'beta1': 0.9}, 'optax.adam takes no argument beta1'),
    ('clip_by_global_norm', {}, 'takes no learning_rate'),
])
def test_a_bad_optimizer_is_named_with_what_would_work(name, kwargs, message):
    assert message in optim.optimizer_problem(name, kwargs)
