"""Attention, dropout and the mixed-precision matmul (transformer/layers.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import layers


def naive_multihead(x_q, x_kv, mha: layers.MultiHeadAttention, mask):
    """Per-head attention written out with numpy loops, as in section 3.2 of the paper."""
    wq, wk, wv = (np.asarray(p.kernel[...]) for p in (mha.query, mha.key, mha.value))
    bq, bv = (np.asarray(p.bias[...]) for p in (mha.query, mha.value))
    bk = np.zeros_like(bq)  # the key projection has no bias (see the next test)
    wo, bo = np.asarray(mha.out.kernel[...]), np.asarray(mha.out.bias[...])
    batch, heads, d_head = x_q.shape[0], wq.shape[1], wq.shape[2]
    out = np.zeros((batch, x_q.shape[1], wo.shape[-1]))
    for b in range(batch):
        concat = []
        for h in range(heads):
            q = x_q[b] @ wq[:, h] + bq[h]
            k = x_kv[b] @ wk[:, h] + bk[h]
            v = x_kv[b] @ wv[:, h] + bv[h]
            scores = q @ k.T / np.sqrt(d_head)
            scores = np.where(mask[b], scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            concat.append(weights @ v)
        out[b] = np.concatenate(concat, -1) @ wo.reshape(heads * d_head, -1) + bo
    return out


def test_attention_equals_naive_per_head_reference(rng):
    mha = layers.MultiHeadAttention(32, 4, rngs=nnx.Rngs(0))
    x_q = rng.normal(size=(2, 5, 32)).astype(np.float32)
    x_kv = rng.normal(size=(2, 7, 32)).astype(np.float32)
    mask = rng.random((2, 5, 7)) < 0.7
    mask[:, :, 0] = True  # every query sees at least one key
    got = mha(jnp.asarray(x_q), jnp.asarray(mask)[:, None], kv=mha.project_kv(jnp.asarray(x_kv)))
    np.testing.assert_allclose(got, naive_multihead(x_q, x_kv, mha, mask), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('rate', [0.1, 0.3, 0.5])
@pytest.mark.parametrize('shape', [(64, 33, 256), (8, 4, 31, 7)])
def test_dropout_drops_its_rate_keeps_the_mean_and_decides_each_element_independently(rate,
                                                                                      shape):
    x = jnp.ones(shape)
    y = np.asarray(layers.dropout(x, rate, jax.random.key(0)))
    assert y.shape == shape
    used = layers.dropout_threshold(rate) / 256
    assert abs(used - rate) <= 1 / 512
    dropped = y == 0
    n = dropped.size
    assert abs(dropped.mean() - used) < 5 * np.sqrt(used * (1 - used) / n)   # 5 sigma
    np.testing.assert_allclose(y[~dropped], 1 / (1 - used), rtol=1e-6)
    np.testing.assert_allclose(y.mean(), 1.0, atol=5 * np.sqrt(used / (1 - used) / n))
    # The four bytes of a random word decide four neighbouring elements: they must not be
    # correlated, and no column (byte position or padding) may be dropped more than others.
    flat = dropped.reshape(-1, shape[-1])
    both = (flat[:, :-1] & flat[:, 1:]).mean()
    assert abs(both - used ** 2) < 5 * np.sqrt(used ** 2 * (1 - used ** 2) / flat[:, 1:].size)
    per_column = flat.mean(0)
    assert np.all(np.abs(per_column - used) < 6 * np.sqrt(used * (1 - used) / flat.shape[0]))
    other = np.asarray(layers.dropout(x, rate, jax.random.key(1))) == 0
    assert (other != dropped).any()


def test_dropout_keeps_dtype_and_rate_0_is_the_identity():
    x = jnp.ones((4, 8), jnp.bfloat16)
    assert layers.dropout(x, 0.1, jax.random.key(0)).dtype == jnp.bfloat16
    assert layers.dropout(x, 0.0, jax.random.key(0)) is x


@pytest.mark.parametrize('w_transposed', [False, True])
def test_mixed_precision_matmul_gradients_use_bfloat16_operands(rng, w_transposed):
    """matmul_dtype=bfloat16: the gradients are those of the float32 product of the rounded
    operands, and every dot of the backward pass (not only the forward) takes bfloat16;
    ``w_transposed`` (w given as [o, i]) gives the same product and gradients."""
    x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    w_given = w.T if w_transposed else w

    def loss(x, w, operand_dtype):
        return jnp.sum(g * layers.matmul(x, w, jnp.float32, operand_dtype,
                                         w_transposed=w_transposed))

    grad_x, grad_w = jax.grad(loss, argnums=(0, 1))(x, w_given, jnp.bfloat16)
    assert grad_x.dtype == grad_w.dtype == jnp.float32
    rounded = [a.astype(jnp.bfloat16).astype(jnp.float32) for a in (x, w, g)]
    np.testing.assert_allclose(grad_x, rounded[2] @ rounded[1].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_w.T if w_transposed else grad_w, rounded[0].T @ rounded[2],
                               rtol=1e-5, atol=1e-5)
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(
        x, w_given, jnp.bfloat16)
    dots = [eqn for eqn in _all_equations(jaxpr.jaxpr) if eqn.primitive.name == 'dot_general']
    assert len(dots) == 3
    assert all(var.aval.dtype == jnp.bfloat16 for eqn in dots for var in eqn.invars)


@pytest.mark.parametrize('transpose_a,transpose_b', [(False, False), (True, False),
                                                     (False, True), (True, True)])
def test_bfloat16_dot_equals_the_float32_product_and_compiles_to_bfloat16_matmuls(
        rng, transpose_a, transpose_b):
    """Every form of ``layers.dot`` gives the float32 product of its bfloat16 operands
    (the padding adds only zeros), and XLA:CPU keeps each matmul in bfloat16: no operand
    of a compiled dot is float32. Shapes exercise both ways of transposing b."""
    m, k, n = 24, 40, 16
    for k_, n_ in ((k, n), (n, k)):
        a = rng.normal(size=(k_, m) if transpose_a else (m, k_))
        b = rng.normal(size=(n_, k_) if transpose_b else (k_, n_))
        a, b = (jnp.asarray(v, jnp.bfloat16) for v in (a, b))
        fn = jax.jit(functools.partial(layers.dot, transpose_a=transpose_a,
                                       transpose_b=transpose_b))
        exact = np.asarray(a, np.float64)
        exact = (exact.T if transpose_a else exact) @ (np.asarray(b, np.float64).T
                                                       if transpose_b else np.asarray(b, np.float64))
        out = fn(a, b)
        assert out.shape == (m, n_) and out.dtype == jnp.float32
        np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-4)
        operand_types = _dot_operand_types(fn.lower(a, b).compile().as_text())
        assert operand_types and all(t == 'bf16' for pair in operand_types for t in pair)


def _dot_operand_types(hlo: str) -> list[tuple[str, ...]]:
    """The element types of the operands of every dot in compiled HLO text."""
    types = dict(re.findall(r'%([\w.\-]+) = (\w+)\[', hlo))
    return [tuple(types[name] for name in re.findall(r'%([\w.\-]+)', operands))
            for operands in re.findall(r' dot\(([^)]*)\)', hlo)]



def _all_equations(jaxpr):
    """The equations of a jaxpr and of every jaxpr nested in their parameters."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, 'jaxpr', param)
            if hasattr(inner, 'eqns'):
                yield from _all_equations(inner)


def _packed_segments(batch: int, length: int) -> np.ndarray:
    """[batch, length] segment ids: row 0 three examples then padding, row 1 all padding,
    the others one example each of a different length."""
    segments = np.zeros((batch, length), np.int32)
    segments[0, :5], segments[0, 5:9], segments[0, 9:length - 3] = 1, 2, 3
    for row in range(2, batch):
        segments[row, :length - row] = 1
    return segments


@pytest.mark.parametrize('impl,causal', [('cudnn', True), ('splash', False), ('splash', True)])
def test_every_attention_implementation_equals_the_einsums_and_their_gradients(rng, impl,
                                                                              causal):
    """Same outputs and gradients at every real query, with several examples packed in a
    row, a fully padded row and padded tails; finite everywhere. ('cudnn' off a GPU is
    jax.nn.dot_product_attention's XLA path; 'splash' off a TPU runs interpreted.)"""
    b, length, h, d_head = 4, 24, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, length, h, d_head)), jnp.float32)
               for _ in range(3))
    segments = jnp.asarray(_packed_segments(b, length))
    mask = layers.Mask(segments, segments, causal=causal)
    real = (segments != 0)[:, :, None, None]                          # [b, q, 1, 1]
    target = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def loss(impl, q, k, v):
        out = layers.attend(q, k, v, mask, impl)
        return jnp.sum(jnp.where(real, out * target, 0.0)), out

    (_, reference), ref_grads = jax.value_and_grad(
        lambda *a: loss('xla', *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, out), grads = jax.value_and_grad(
        lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, reference, 0),
                               atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_attention_implementations_refuse_what_they_cannot_compute(rng):
    q = jnp.zeros((1, 4, 2, 8))
    arbitrary = jnp.asarray(rng.random((1, 1, 4, 4)) < 0.5)
    with pytest.raises(ValueError, match="not an arbitrary boolean mask; use 'xla' or 'cudnn'"):
        layers.attend(q, q, q, arbitrary, 'splash')
    with pytest.raises(ValueError, match="no attention dropout; use model.attention_impl='xla'"):
        layers.attend(q, q, q, arbitrary, 'cudnn', dropout_rate=0.1,
                      dropout_rng=jax.random.key(0))
    # The mask an arbitrary array can express still works on the einsum path and cuDNN's.
    for impl in ('xla', 'cudnn'):
        assert np.isfinite(np.asarray(layers.attend(q + 1, q, q, arbitrary, impl))).all()
    assert 'expected one of' in layers.attention_impl_problem('flash', 0.0)
