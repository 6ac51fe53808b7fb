"""Building blocks of the Transformer (Vaswani et al., 2017, section 3) in Flax NNX.

Shape letters used throughout: b batch, q query length, k key/value length, h heads,
dh d_head = d_model / h, d d_model, f d_ff.

Masks are boolean and broadcastable to [b, h, q, k]; True means "may attend". The
encoder-decoder passes them as a ``Mask`` (segment ids and causality), which the einsum path
expands to a boolean array and the Pallas kernel reads as segment ids; the decoder-only
model passes a boolean array. ``attend`` picks the implementation.

Dropout takes an explicit PRNG key (``None`` = deterministic), so every step function
stays pure; the train step derives the key from (seed, step), so a resumed run draws the
same masks as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from transformer.sharding import BATCH_AXES, constrain_batch

Array = jax.Array
# A decoder layer's self-attention cache of L slots: {'k': [b, g, dh, L], 'v': [b, g, L, dh]}
# for g K/V heads, each in the layout its matmul in ``cached_attention`` reads.
KVCache = dict[str, Array]

# Glorot/Xavier uniform: the initialisation of the reference tensor2tensor implementation.
_xavier = nnx.initializers.xavier_uniform


def split_rng(rng: Array | None, n: int) -> list[Array | None]:
    """Splits a dropout key into n keys; ``None`` (no dropout) stays ``None``."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def dropout_threshold(rate: float) -> int:
    """The byte value below which ``dropout`` drops an element: ``rate`` (in [0, 1)) in
    1/256 steps."""
    return min(round(rate * 256), 255)


@jax.named_scope('dropout')
def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout: zeroes a fraction ``rate`` of ``x`` and rescales the rest.

    Each element's keep/drop decision compares one random byte with
    ``dropout_threshold(rate)``, so the rate used is rounded to a multiple of 1/256 (0.1 ->
    26/256 = 0.1016; 0.3 -> 77/256) and the kept values are scaled by the exact inverse of
    the kept fraction, so E[dropout(x)] = x still holds. A 32-bit word of the counter-based
    generator gives four decisions; ``jax.random.bernoulli`` spends a whole word (one
    threefry hash) on each, which on a CPU is a tenth of a small model's train step.

    x: any shape [..., n]; the random words are drawn over x.shape[:-1], so batch and head
    axes keep their sharding.
    """
    if rng is None or rate == 0.0:
        return x
    threshold = dropout_threshold(rate)
    *lead, n = x.shape
    words = jax.random.bits(rng, (*lead, -(-n // 4)), jnp.uint32)        # [..., ceil(n/4)]
    random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8)          # [..., ceil(n/4), 4]
    random_bytes = random_bytes.reshape(*lead, -1)[..., :n]                # [..., n]
    keep = random_bytes >= threshold
    return jnp.where(keep, x * (256.0 / (256 - threshold)), 0).astype(x.dtype)


def matmul(x: Array, w: Array, dtype: Any, operand_dtype: Any = None, *,
           w_transposed: bool = False) -> Array:
    """[n, i] x [i, o] -> [n, o] in ``dtype``, accumulated in float32 (w [o, i] with
    ``w_transposed``: x @ w.T, as the output layer multiplies by the embedding table).

    The operands are cast to ``operand_dtype`` (default: ``dtype``). On CPU and GPU a
    bfloat16 matmul only runs at bfloat16 speed when it accumulates in float32
    (``preferred_element_type``). With float32 activations and bfloat16 operands
    (mixed precision), the backward pass's two matmuls take bfloat16 operands too: plain
    autodiff would multiply the float32 output gradient by the bfloat16 operand at float32
    speed. Bfloat16 matmuls on a CPU go through ``dot`` (which see).
    """
    operand_dtype = jnp.dtype(dtype if operand_dtype is None else operand_dtype)
    if operand_dtype == jnp.dtype(dtype) and not _bf16_on_cpu(operand_dtype):
        w = w.T if w_transposed else w
        return jnp.dot(x.astype(dtype), w.astype(dtype),
                       preferred_element_type=jnp.float32).astype(dtype)
    return _mixed_matmul(x, w, operand_dtype, x.dtype, w.dtype, w_transposed).astype(dtype)


def _bf16_on_cpu(dtype) -> bool:
    return (jnp.dtype(dtype) == jnp.bfloat16
            and (_TARGET_PLATFORM.get() or jax.default_backend()) == 'cpu')


_PAD = 8  # rows or columns added to a transposed operand (see ``dot``)


def dot(a: Array, b: Array, *, transpose_a: bool = False, transpose_b: bool = False) -> Array:
    """(a.T if transpose_a else a) @ (b.T if transpose_b else b) for 2-D a and b, in float32.

    XLA:CPU (jax 0.10) hands a bfloat16 matmul to YNNPACK, at bfloat16 speed, only in the
    row-major form [m, k] @ [k, n]; any other form it computes in float32, 4-6x slower on
    an AVX-512/AMX host (``make bench CASES=canonical_matmul``). Every backward-pass matmul
    is of another form (x.T @ grad, grad @ w.T), and XLA folds an explicit transpose back
    into the matmul. So for bfloat16 on a CPU the transposed operand is padded with
    ``_PAD`` zero rows or columns, which XLA cannot fold: padding a non-contracted axis
    makes ``_PAD`` extra rows of the product, sliced off; padding the contracted axis of
    both operands adds zeros to each sum. The second copies ``a``, the first the product,
    so the cheaper is chosen. Elsewhere, and for other dtypes, it is one plain matmul.
    """
    if not _bf16_on_cpu(a.dtype):
        return jnp.dot(a.T if transpose_a else a, b.T if transpose_b else b,
                       preferred_element_type=jnp.float32)
    if transpose_a:                                     # a [k, m] -> [m + _PAD, k]
        a_t = jnp.pad(a.T, ((0, _PAD), (0, 0)))
        return dot(a_t, b, transpose_b=transpose_b)[:a.shape[1]]
    if not transpose_b:
        return jnp.dot(a, b, preferred_element_type=jnp.float32)
    n, k = b.shape                                      # b [n, k]
    if k < 2 * n:  # copying a (bfloat16 [m, k]) costs less than the float32 product [m, n]
        return jnp.dot(jnp.pad(a, ((0, 0), (0, _PAD))), jnp.pad(b.T, ((0, _PAD), (0, 0))),
                       preferred_element_type=jnp.float32)
    return jnp.dot(a, jnp.pad(b.T, ((0, 0), (0, _PAD))), preferred_element_type=jnp.float32)[:, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _mixed_matmul(x: Array, w: Array, operand_dtype, x_dtype, w_dtype,
                  w_transposed: bool) -> Array:
    """x [n, i] @ w [i, o] (w [o, i] transposed) -> [n, o] float32, both passes with
    ``operand_dtype`` operands.

    ``x_dtype`` and ``w_dtype`` (those of x and w) are the dtypes of the gradients.
    """
    return _mixed_matmul_fwd(x, w, operand_dtype, x_dtype, w_dtype, w_transposed)[0]


def _mixed_matmul_fwd(x, w, operand_dtype, x_dtype, w_dtype, w_transposed):
    x, w = x.astype(operand_dtype), w.astype(operand_dtype)  # kept for the backward pass
    return dot(x, w, transpose_b=w_transposed), (x, w)


def _mixed_matmul_bwd(operand_dtype, x_dtype, w_dtype, w_transposed, residuals, grad):
    x, w = residuals
    grad = grad.astype(operand_dtype)                                              # [n, o]
    grad_x = dot(grad, w, transpose_b=not w_transposed)                            # [n, i]
    grad_w = dot(x, grad, transpose_a=True)                                        # [i, o]
    return grad_x.astype(x_dtype), (grad_w.T if w_transposed else grad_w).astype(w_dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


class Projection(nnx.Module):
    """A linear map over a kernel of any rank (computed as one 2-D matmul), plus a bias.

    ``kernel_shape`` is split into input axes (the first ``num_in`` entries, contracted
    with the trailing axes of the input) and output axes (the rest, which the bias has).
    Keeping heads as their own kernel axis ([d, h, dh] rather than [d, h*dh]) means no
    reshapes in the attention code and a named axis for tensor parallelism. ``axes`` names
    each kernel axis (see ``sharding.py``); the bias takes the output axes' names.
    """

    def __init__(self, kernel_shape: tuple[int, ...], num_in: int, axes: tuple[str, ...], *,
                 use_bias: bool = True, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 matmul_dtype: Any = None, rngs: nnx.Rngs):
        if len(axes) != len(kernel_shape):
            raise ValueError(f'axes {axes} do not name the kernel shape {kernel_shape}')
        in_axes = tuple(range(num_in))
        out_axes = tuple(range(num_in, len(kernel_shape)))
        init = _xavier(in_axis=in_axes, out_axis=out_axes)
        self.kernel = nnx.Param(init(rngs.params(), kernel_shape, param_dtype), logical_axes=axes)
        self.bias = nnx.Param(jnp.zeros(kernel_shape[num_in:], param_dtype),
                              logical_axes=axes[num_in:]) if use_bias else None
        self.num_in = num_in
        self.dtype = dtype
        self.matmul_dtype = matmul_dtype

    def __call__(self, x: Array) -> Array:
        """[..., *in_axes] -> [..., *out_axes]."""
        kernel = self.kernel[...]
        in_shape, out_shape = kernel.shape[:self.num_in], kernel.shape[self.num_in:]
        lead = x.shape[:x.ndim - self.num_in]
        # One plain 2-D matmul: XLA:CPU computes the weight gradient of a [rows, in] x
        # [in, out] dot ~20% faster than that of the same einsum over [b, l, ...] operands.
        y = matmul(x.reshape(-1, math.prod(in_shape)), kernel.reshape(math.prod(in_shape), -1),
                   self.dtype, self.matmul_dtype)
        y = y.reshape(*lead, *out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array | None, *,
                          dropout_rate: float = 0.0, dropout_rng: Array | None = None,
                          return_weights: bool = False):
    """Scaled dot-product attention, softmax(q k^T / sqrt(dh)) v (section 3.2.1).

    Args:
      q: [b, q, h, dh] queries.  k, v: [b, k, h, dh] keys and values.
      mask: boolean, broadcastable to [b, h, q, k]; True = attend.
    Returns:
      [b, q, h, dh] in the dtype of ``v`` (and the [b, h, q, k] float32 weights if asked).

    The scale is 1/sqrt(d_head) -- the size of one head's dot product -- not the number of
    heads or d_model: it keeps the logits' variance near 1 for unit-variance q and k, so the
    softmax does not saturate. Scores and softmax run in float32 even for bfloat16 inputs.
    """
    d_head = q.shape[-1]
    q = q * jnp.asarray(d_head ** -0.5, q.dtype)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = masked_softmax(scores, mask)
    dropped = dropout(weights, dropout_rate, dropout_rng)
    out = jnp.einsum('bhqk,bkhd->bqhd', dropped.astype(v.dtype), v,
                     preferred_element_type=jnp.float32).astype(v.dtype)
    return (out, weights) if return_weights else out


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax over the last axis of float32 ``scores`` where ``mask`` (broadcastable; True =
    attend) allows, under the name 'attention_softmax' that profiles group its time under.

    Masked scores become a large finite negative, not -inf: a fully masked row (a padding
    query) then gets uniform weights instead of NaN, and its output is ignored downstream.
    """
    with jax.named_scope('attention_softmax'):
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(scores, axis=-1)


def cached_attention(q: Array, keys: Array, values: Array, visible: Array,
                     prefix: tuple[Array, Array, Array] | None = None) -> Array:
    """One query per row against a key/value cache: what ``dot_product_attention`` computes
    for q [b, 1, h, dh], with the cache in the layouts its two matmuls read directly.

    keys: [b, g, dh, n] and values [b, g, n, dh] for g K/V heads (g divides h; query head j
    reads K/V head j // (h / g), as in ``attend``); visible: [b, n] bool, True = attend.
    prefix: keys and values [m, s, g, dh] and visible [m, s] that every row also attends to,
    in one softmax with its cache, each shared by b / m consecutive rows (a decoder-only
    model's source, shared by its beams): they are read once, not copied per row.
    Returns [b, 1, h, dh] in the dtype of ``values``.

    Stored as [b, n, g, dh], the cache would have to be transposed for the scores' matmul
    at every decoding step: a copy of every layer's whole cache per generated token.
    """
    b, _, h, d_head = q.shape
    g = keys.shape[1]
    q = (q * jnp.asarray(d_head ** -0.5, q.dtype)).reshape(b, g, h // g, d_head)
    scores = jnp.einsum('bgrd,bgdn->bgrn', q, keys, preferred_element_type=jnp.float32)
    if prefix is not None:
        prefix_k, prefix_v, prefix_visible = prefix
        m, s = prefix_visible.shape
        rows = q.reshape(m, b // m, g, h // g, d_head)   # the rows sharing a prefix
        prefix_scores = jnp.einsum('mjgrd,msgd->mjgrs', rows, prefix_k.astype(q.dtype),
                                   preferred_element_type=jnp.float32)
        scores = jnp.concatenate([prefix_scores.reshape(b, g, h // g, s), scores], -1)
        visible = jnp.concatenate([jnp.repeat(prefix_visible, b // m, 0), visible], -1)
    weights = masked_softmax(scores, visible[:, None, None, :]).astype(values.dtype)
    out = jnp.einsum('bgrn,bgnd->bgrd', weights[..., -keys.shape[-1]:], values,
                     preferred_element_type=jnp.float32)
    if prefix is not None:
        prefix_weights = weights[..., :s].reshape(m, b // m, g, h // g, s)
        out += jnp.einsum('mjgrs,msgd->mjgrd', prefix_weights, prefix_v.astype(values.dtype),
                          preferred_element_type=jnp.float32).reshape(out.shape)
    return out.reshape(b, 1, h, d_head).astype(values.dtype)


def attention_mask(q_segments: Array, k_segments: Array) -> Array:
    """[b, q] and [b, k] segment ids -> [b, 1, q, k]: attend within the same example only.

    Segment 0 is padding: no query attends to a padding key, and padding queries see
    nothing (their outputs are never used).
    """
    same = q_segments[:, None, :, None] == k_segments[:, None, None, :]
    return same & (k_segments[:, None, None, :] != 0)


def causal_mask(length: int) -> Array:
    """[1, 1, t, t]: position i may attend to positions j <= i."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


@flax.struct.dataclass
class Mask:
    """Who may attend to whom: a query sees the keys of its own segment (0 = padding, seen
    by nobody) and, if ``causal``, only those at or before its own position."""
    q_segments: Array            # [b, q] int
    k_segments: Array            # [b, k] int
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    def dense(self) -> Array:
        """The boolean [b, 1, q, k] mask."""
        mask = attention_mask(self.q_segments, self.k_segments)
        return mask & causal_mask(self.q_segments.shape[1]) if self.causal else mask


ATTENTION_IMPLS = ('xla', 'cudnn', 'splash')


def attention_impl_problem(impl: str, attention_dropout: float) -> str | None:
    """Why ``impl`` cannot compute this model's attention, or None if it can."""
    if impl not in ATTENTION_IMPLS:
        return f'expected one of {ATTENTION_IMPLS}'
    if impl != 'xla' and attention_dropout > 0:
        return (f"the fused kernels have no attention dropout; use model.attention_impl='xla' "
                f'or model.attention_dropout=0 (it is {attention_dropout})')
    return None


def attend(q: Array, k: Array, v: Array, mask: Mask | Array, impl: str = 'xla', *,
           dropout_rate: float = 0.0, dropout_rng: Array | None = None,
           return_weights: bool = False):
    """Scaled dot-product attention by the implementation ``impl`` names.

    'xla': ``dot_product_attention`` above (einsums; the reference, and the only one with
    attention dropout). 'cudnn': ``jax.nn.dot_product_attention``, cuDNN's fused kernel on a
    GPU (bfloat16 or float16 inputs, d_head a multiple of 8 up to 128), XLA's own
    composition elsewhere. 'splash': the Pallas splash-attention kernel, native on TPU and
    run by the Pallas interpreter elsewhere (to check its numbers, not for speed).

    q: [b, q, h, dh]; k, v: [b, k, g, dh] with g dividing h (g < h: grouped-query attention,
    each K/V head serving h / g query heads) -> [b, q, h, dh] in the dtype of ``v``. ``mask``:
    a ``Mask``, or any boolean array broadcastable to [b, h, q, k] ('xla' and 'cudnn' only).
    Outputs at padding queries (segment 0) differ between implementations: nothing reads them.
    ``return_weights`` (the einsum path only) also returns the [b, h, q, k] weights.
    """
    if return_weights:
        impl = 'xla'  # the fused kernels never form the weights
    dense = mask.dense() if isinstance(mask, Mask) else mask
    if impl != 'cudnn' and k.shape[2] != q.shape[2]:  # grouped-query: share each K/V head
        k, v = (jnp.repeat(x, q.shape[2] // k.shape[2], axis=2) for x in (k, v))
    if impl == 'xla':
        return dot_product_attention(q, k, v, dense, dropout_rate=dropout_rate,
                                     dropout_rng=dropout_rng, return_weights=return_weights)
    problem = attention_impl_problem(impl, dropout_rate if dropout_rng is not None else 0.0)
    if problem:
        raise ValueError(f'model.attention_impl={impl!r}: {problem}')
    if impl == 'cudnn':
        return _cudnn_attention(q, k, v, jnp.broadcast_to(dense, (q.shape[0], 1, *dense.shape[-2:])))
    if not isinstance(mask, Mask):
        raise ValueError("model.attention_impl='splash' takes segment ids and causality (a "
                         "layers.Mask), not an arbitrary boolean mask; use 'xla' or 'cudnn'.")
    return _splash_attention(q, k, v, mask)


def _cudnn_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    on_gpu = jax.default_backend() == 'gpu'
    if on_gpu and (q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[-1] % 8
                   or q.shape[-1] > 128):
        raise ValueError(
            f"model.attention_impl='cudnn': cuDNN's fused attention needs bfloat16 or float16 "
            f'inputs and d_head a multiple of 8 up to 128, not {q.dtype} with d_head '
            f"{q.shape[-1]}; set model.dtype='bfloat16' or use model.attention_impl='xla'.")
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                       implementation='cudnn' if on_gpu else None)
    return out.astype(v.dtype)


_SPLASH_BLOCK = 128  # the kernel's tile over queries and keys; lengths are padded to it
_TARGET_PLATFORM = contextvars.ContextVar('target_platform', default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Traces kernels for ``platform`` ('tpu', 'gpu', 'cpu') rather than the local backend:
    compiling for a TPU slice on a CPU host must not pick the Pallas interpreter."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def _splash_attention(q: Array, k: Array, v: Array, mask: Mask) -> Array:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )
    q_len, h, d_head, out_dtype = q.shape[1], q.shape[2], q.shape[3], v.dtype

    def pad(x):  # [b, l, ...] -> [b, l rounded up to the block, ...], zeros after
        return jnp.pad(x, [(0, 0), (0, -x.shape[1] % _SPLASH_BLOCK)] + [(0, 0)] * (x.ndim - 2))

    block = _SPLASH_BLOCK
    shape = (q_len + -q_len % block, k.shape[1] + -k.shape[1] % block)
    head_mask = splash_mask.CausalMask(shape) if mask.causal else splash_mask.FullMask(shape)
    kernel = splash.make_splash_mha(
        splash_mask.MultiHeadMask([head_mask] * h),
        block_sizes=splash.BlockSizes(block, block, block, block, block, block, block, block),
        head_shards=1, q_seq_shards=1,
        interpret=(_TARGET_PLATFORM.get() or jax.default_backend()) != 'tpu')
    # [b, l, h, dh] -> [b, h, l, dh]; the kernel does not scale the queries itself.
    q = pad(q * jnp.asarray(d_head ** -0.5, q.dtype)).transpose(0, 2, 1, 3)
    k, v = (pad(x.astype(q.dtype)).transpose(0, 2, 1, 3) for x in (k, v))
    segments = splash.SegmentIds(pad(mask.q_segments), pad(mask.k_segments))
    run = jax.vmap(kernel)
    # On a mesh each device runs the kernel on its own rows (XLA cannot split a custom call).
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and q.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES) == 0:
        rows = PartitionSpec(BATCH_AXES)
        run = jax.shard_map(run, mesh=mesh, in_specs=(rows, rows, rows, splash.SegmentIds(rows, rows)),
                            out_specs=rows, check_vma=False)
    out = run(q, k, v, segments)                                 # [b, h, q_pad, dh]
    return out.transpose(0, 2, 1, 3)[:, :q_len].astype(out_dtype)


def rotary(x: Array, positions: Array, base: float = 10000.0) -> Array:
    """Rotary position embedding (Su et al., 2021): x [b, l, h, dh], positions [b, l].

    Channel i of the first half and channel i of the second half form a pair, rotated by
    the angle position * base^(-2i / dh). A query at position m and a key at position n
    then score q R(m)^T R(n) k = q R(n - m) k: attention sees only their offset.
    """
    half = x.shape[-1] // 2
    inv_freq = jnp.asarray(base ** (-np.arange(half) * 2.0 / x.shape[-1]), jnp.float32)
    angles = positions[:, :, None, None].astype(jnp.float32) * inv_freq      # [b, l, 1, dh/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class _NamedNorm:
    """Names the norm's operations 'norm' in the compiled program, where profiles
    (``benchmarks/profile.py``) find them; parameters and numerics are nnx's."""

    def __call__(self, x: Array) -> Array:
        with jax.named_scope('norm'):
            return super().__call__(x)


class LayerNorm(_NamedNorm, nnx.LayerNorm):
    pass


class RMSNorm(_NamedNorm, nnx.RMSNorm):
    pass


def norm_layer(kind: str, features: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
               axis: str = 'embed') -> nnx.Module:
    """LayerNorm (scale and bias) or RMSNorm (scale only) over the last axis, epsilon 1e-6,
    its parameters' axis named ``axis``."""
    meta = {'logical_axes': (axis,)}
    if kind == 'rmsnorm':
        return RMSNorm(features, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs, scale_metadata=meta)
    return LayerNorm(features, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         scale_metadata=meta, bias_metadata=meta)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention (section 3.2.2): h parallel heads of size d_model / h.

    Used as encoder self-attention, causal decoder self-attention (with a key/value cache
    for incremental decoding) and encoder-decoder cross-attention (whose keys and values
    are projected once per source sentence with ``project_kv``).
    """

    def __init__(self, d_model: int, num_heads: int, *, attention_dropout: float = 0.0,
                 attention_impl: str = 'xla', num_kv_heads: int = 0, qk_norm: bool = False,
                 rope: bool = False, use_bias: bool = True, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, matmul_dtype: Any = None, rngs: nnx.Rngs):
        num_kv_heads = num_kv_heads or num_heads
        if d_model % num_heads or num_heads % num_kv_heads:
            raise ValueError(f'd_model={d_model}, num_heads={num_heads}, num_kv_heads='
                             f'{num_kv_heads}: heads must divide d_model, K/V heads the heads')
        d_head = d_model // num_heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, matmul_dtype=matmul_dtype, rngs=rngs)
        axes = ('embed', 'heads', 'kv')
        self.query = Projection((d_model, num_heads, d_head), 1, axes, use_bias=use_bias, **kw)
        # No key bias: it adds q.b to every score of a query alike, which softmax ignores,
        # so its gradient is exactly zero and Adam would only turn rounding noise into steps.
        self.key = Projection((d_model, num_kv_heads, d_head), 1, axes, use_bias=False, **kw)
        self.value = Projection((d_model, num_kv_heads, d_head), 1, axes, use_bias=use_bias, **kw)
        self.out = Projection((num_heads, d_head, d_model), 2, ('heads', 'kv', 'embed'),
                              use_bias=use_bias, **kw)
        # QK-norm: RMSNorm of each head's query and key, which bounds the logits.
        self.query_norm, self.key_norm = ((norm_layer('rmsnorm', d_head, dtype, param_dtype,
                                                      rngs, axis='kv') for _ in range(2))
                                          if qk_norm else (None, None))
        self.rope = rope
        self.attention_dropout = attention_dropout
        self.attention_impl = attention_impl

    def _position(self, x: Array, norm, positions: Array | None) -> Array:
        """QK-norm and rotary positions (when on) of projected queries or keys [b, l, h, dh]."""
        if norm is not None:
            x = norm(x)
        return rotary(x, positions) if self.rope else x

    def queries(self, x: Array, positions: Array | None = None) -> Array:
        """[b, q, d] -> [b, q, h, dh]; ``positions`` [b, q] are needed with rotary positions."""
        return self._position(self.query(x), self.query_norm, positions)

    def project_kv(self, x: Array, positions: Array | None = None) -> tuple[Array, Array]:
        """[b, k, d] -> keys and values, each [b, k, g, dh] (g = K/V heads)."""
        return self._position(self.key(x), self.key_norm, positions), self.value(x)

    def __call__(self, x: Array, mask: Mask | Array, *, kv: tuple[Array, Array] | None = None,
                 positions: Array | None = None, dropout_rng: Array | None = None,
                 return_weights: bool = False, decoding: bool = False):
        """Attends from ``x`` [b, q, d] to ``kv`` (default: self-attention over ``x``, at
        ``positions`` [b, q] when positions are rotary).

        Returns [b, q, d] (and the [b, h, q, k] attention weights if asked; those come from
        the einsum path whatever ``attention_impl`` is). A single query, or ``decoding`` (a
        decoding step's few queries per row), uses the einsums: a fused kernel gains
        nothing there.
        """
        k, v = self.project_kv(x, positions) if kv is None else kv
        q = self.queries(x, positions)
        impl = 'xla' if decoding or q.shape[1] == 1 else self.attention_impl
        result = attend(q, k, v, mask, impl, dropout_rate=self.attention_dropout,
                        dropout_rng=dropout_rng, return_weights=return_weights)
        if return_weights:
            return self.out(result[0]), result[1]
        return self.out(result)

    def attend_cached(self, x: Array, cache: KVCache, index: Array, *,
                      positions: Array | None = None,
                      prefix: tuple[Array, Array, Array] | None = None) -> tuple[Array, KVCache]:
        """One decoding step of causal self-attention.

        Args:
          x: [b, 1, d], the input at cache slot ``index``.
          cache: keys and values of slots < index (``KVCache``).
          index: scalar int, the slot being decoded.
          positions: [b, 1], the position rotary embeddings see (default: ``index``).
          prefix: keys and values every step also attends to, each [m, s, g, dh], and which
            of them are real, [m, s] bool (a decoder-only model's source), each shared by
            b / m consecutive rows (``cached_attention``).
        Returns:
          [b, 1, d] output and the cache with this slot's key and value written in.
        """
        if positions is None:
            positions = jnp.full((x.shape[0], 1), index, jnp.int32)
        k, v = self.project_kv(x, positions)                                  # [b, 1, g, dh]
        keys = jax.lax.dynamic_update_slice_in_dim(
            cache['k'], k.transpose(0, 2, 3, 1).astype(cache['k'].dtype), index, 3)
        values = jax.lax.dynamic_update_slice_in_dim(
            cache['v'], v.transpose(0, 2, 1, 3).astype(cache['v'].dtype), index, 2)
        cache = {'k': keys, 'v': values}
        # Slots after ``index`` hold zeros (or stale values): mask them out.
        visible = jnp.broadcast_to(jnp.arange(keys.shape[-1]) <= index,
                                   (x.shape[0], keys.shape[-1]))               # [b, L]
        out = cached_attention(self.queries(x, positions), keys, values, visible, prefix)
        return self.out(out), cache


# Feed-forward activations; the gated ones (Shazeer, 2020) multiply act(x W_gate) by x W_in.
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': jax.nn.gelu, 'swiglu': jax.nn.silu,
               'geglu': jax.nn.gelu}
GATED = ('swiglu', 'geglu')


def ffn_width(ffn: str, d_ff: int) -> int:
    """Hidden units of the feed-forward layer: ``d_ff``, or for a gated one 2/3 of it rounded
    to a multiple of 64 (base: 1,344, big: 2,752; whole tiles, and divisible by a tensor
    axis of 16), so its three matrices hold about as many parameters as the ungated layer's
    two (3 x 2/3 = 2)."""
    return max(64, round(2 * d_ff / 3 / 64) * 64) if ffn in GATED else d_ff


class FeedForward(nnx.Module):
    """Position-wise feed-forward network, max(0, x W1 + b1) W2 + b2 (section 3.3); or with
    GELU, or gated: (act(x W_gate) * x W1) W2."""

    def __init__(self, d_model: int, d_ff: int, *, ffn: str = 'relu', use_bias: bool = True,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 matmul_dtype: Any = None, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  matmul_dtype=matmul_dtype, rngs=rngs)
        width = ffn_width(ffn, d_ff)
        self.wi = Projection((d_model, width), 1, ('embed', 'mlp'), **kw)
        self.wi_gate = Projection((d_model, width), 1, ('embed', 'mlp'), **kw) if ffn in GATED else None
        self.wo = Projection((width, d_model), 1, ('mlp', 'embed'), **kw)
        self.activation = ACTIVATIONS[ffn]

    def __call__(self, x: Array) -> Array:
        """[b, l, d] -> [b, l, d]."""
        if self.wi_gate is None:
            return self.wo(self.activation(self.wi(x)))
        return self.wo(self.activation(self.wi_gate(x)) * self.wi(x))


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What every encoder and decoder layer needs to know."""
    d_model: int
    d_ff: int
    num_heads: int
    dropout_rate: float = 0.1
    attention_dropout: float = 0.0
    pre_ln: bool = False
    attention_impl: str = 'xla'     # see ``attend``
    norm: str = 'layernorm'         # or 'rmsnorm'
    ffn: str = 'relu'               # a key of ACTIVATIONS
    num_kv_heads: int = 0           # K/V heads of self- and cross-attention; 0 = num_heads
    qk_norm: bool = False
    rope: bool = False              # rotary positions in self-attention
    use_bias: bool = True           # biases of the projections and feed-forward layers
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None        # operands of the projections' matmuls; None = dtype


def attention_layer(cfg: BlockConfig, rngs: nnx.Rngs, *, cross: bool = False
                    ) -> MultiHeadAttention:
    """Self-attention (rotary if ``cfg.rope``) or, ``cross``, encoder-decoder attention."""
    return MultiHeadAttention(
        cfg.d_model, cfg.num_heads, attention_dropout=cfg.attention_dropout,
        attention_impl=cfg.attention_impl, num_kv_heads=cfg.num_kv_heads, qk_norm=cfg.qk_norm,
        rope=cfg.rope and not cross, use_bias=cfg.use_bias, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, matmul_dtype=cfg.matmul_dtype, rngs=rngs)


def feed_forward(cfg: BlockConfig, rngs: nnx.Rngs) -> FeedForward:
    return FeedForward(cfg.d_model, cfg.d_ff, ffn=cfg.ffn, use_bias=cfg.use_bias, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, matmul_dtype=cfg.matmul_dtype, rngs=rngs)


class Residual(nnx.Module):
    """Wraps a sublayer with dropout, a residual connection and layer normalisation.

    post-LN (the paper, section 3.1): LayerNorm(x + Dropout(Sublayer(x))).
    pre-LN: x + Dropout(Sublayer(LayerNorm(x))); the residual path is an identity, which
    trains deep stacks without warmup tuning but needs a final norm on the stack output.
    The norm is ``cfg.norm``: LayerNorm or RMSNorm.
    """

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.norm = norm_layer(cfg.norm, cfg.d_model, cfg.dtype, cfg.param_dtype, rngs)
        self.pre_ln = cfg.pre_ln
        self.rate = cfg.dropout_rate

    def __call__(self, x: Array, sublayer, rng: Array | None) -> Array:
        if self.pre_ln:
            return x + dropout(sublayer(self.norm(x)), self.rate, rng)
        return self.norm(x + dropout(sublayer(x), self.rate, rng))


class EncoderLayer(nnx.Module):
    """Self-attention then feed-forward, each wrapped in ``Residual`` (section 3.1)."""

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.self_attention = attention_layer(cfg, rngs)
        self.feed_forward = feed_forward(cfg, rngs)
        self.attention_block = Residual(cfg, rngs=rngs)
        self.ff_block = Residual(cfg, rngs=rngs)

    def __call__(self, x: Array, mask: Mask, dropout_rng: Array | None = None,
                 positions: Array | None = None) -> Array:
        """x: [b, s, d]; mask: over [b, s] source segments; positions: [b, s] -> [b, s, d]."""
        r = split_rng(dropout_rng, 3)
        x = self.attention_block(
            x, lambda y: self.self_attention(y, mask, positions=positions, dropout_rng=r[0]), r[1])
        return constrain_batch(self.ff_block(x, self.feed_forward, r[2]))


class DecoderLayer(nnx.Module):
    """Causal self-attention, cross-attention to the encoder, feed-forward (section 3.1)."""

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.self_attention = attention_layer(cfg, rngs)
        self.cross_attention = attention_layer(cfg, rngs, cross=True)
        self.feed_forward = feed_forward(cfg, rngs)
        self.self_block = Residual(cfg, rngs=rngs)
        self.cross_block = Residual(cfg, rngs=rngs)
        self.ff_block = Residual(cfg, rngs=rngs)

    def __call__(self, y: Array, cross_kv: tuple[Array, Array], self_mask: Mask,
                 cross_mask: Mask, dropout_rng: Array | None = None, *,
                 positions: Array | None = None, return_weights: bool = False):
        """Full-sequence pass (training, scoring).

        y: [b, t, d]; cross_kv: encoder keys/values, each [b, s, g, dh];
        self_mask: causal over [b, t] target segments; cross_mask: target to source segments;
        positions: [b, t] (read by rotary self-attention).
        Returns [b, t, d] (and the [b, h, t, s] cross-attention weights if asked).
        """
        r = split_rng(dropout_rng, 5)
        weights = []

        def cross_attend(z):
            out = self.cross_attention(z, cross_mask, kv=cross_kv, dropout_rng=r[2],
                                       return_weights=return_weights)
            if not return_weights:
                return out
            weights.append(out[1])
            return out[0]

        y = self.self_block(
            y, lambda z: self.self_attention(z, self_mask, positions=positions, dropout_rng=r[0]),
            r[1])
        y = self.cross_block(y, cross_attend, r[3])
        y = constrain_batch(self.ff_block(y, self.feed_forward, r[4]))
        return (y, weights[0]) if return_weights else y

    def step(self, y: Array, cross_kv: tuple[Array, Array], cross_mask: Mask,
             cache: KVCache, index: Array) -> tuple[Array, KVCache]:
        """One incremental decoding step: y [b, 1, d] at position ``index`` -> [b, 1, d].

        ``cross_kv`` (each [n, s, g, dh]) and ``cross_mask`` (queries [n, beams], keys
        [n, s]) may serve several rows per source: the beams = b / n consecutive rows of y
        then attend to their source as that many queries of one row.
        """
        new_cache = {}

        def attend(z):
            out, new_cache['self'] = self.self_attention.attend_cached(z, cache, index)
            return out

        def cross_attend(z):  # [b, 1, d] -> [n, beams, d] -> [b, 1, d]
            queries = z.reshape(*cross_mask.q_segments.shape, z.shape[-1])
            return self.cross_attention(queries, cross_mask, kv=cross_kv,
                                        decoding=True).reshape(z.shape)

        y = self.self_block(y, attend, None)
        y = self.cross_block(y, cross_attend, None)
        return self.ff_block(y, self.feed_forward, None), new_cache['self']
