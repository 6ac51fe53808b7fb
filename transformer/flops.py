"""Model FLOPs and device peaks: the two halves of model FLOPs utilization (MFU).

MFU = model FLOPs per step / (step time x devices x peak FLOP/s per device). The model
FLOPs count 2 per multiply-add of: the Q/K/V/O projections; attention scores and values
over the full score matrix; both feed-forward matmuls; the cross-attention K/V projections
of every decoder layer; the output projection. Training = 3 x forward (the backward pass
is twice the forward). Embedding lookups, softmax, normalization, the optimizer and any
recomputation (remat) are not counted, so MFU does not reward doing more work. The
training loop, ``--compile_only`` and ``benchmarks/`` all use these functions.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from transformer import layers
from transformer.model import ModelConfig

log = logging.getLogger('transformer')


def forward_flops(cfg: ModelConfig, src_len: int, tgt_len: int) -> float:
    """FLOPs of one forward pass over one (source, target) example of these lengths.

    Grouped-query attention shrinks the K/V projections to g / h of d x d; a gated
    feed-forward layer has three matrices of ``layers.ffn_width``; a decoder-only model runs
    all its layers over source + target (attention over the whole score matrix, as computed).
    """
    d, s, t = cfg.d_model, src_len, tgt_len
    kv = d * (cfg.num_kv_heads or cfg.num_heads) // cfg.num_heads       # K/V width
    width = layers.ffn_width(cfg.ffn, cfg.d_ff)
    ffn = (3 if cfg.ffn in layers.GATED else 2) * d * width            # per token

    def self_attention(n):  # Q, O; K, V; scores and values over n x n
        return 2 * n * d * d + 2 * n * d * kv + 2 * n * n * d

    output = t * d * cfg.vocab_size
    if cfg.architecture == 'decoder_only':
        n = s + t
        layer_count = cfg.num_encoder_layers + cfg.num_decoder_layers
        return 2.0 * (layer_count * (self_attention(n) + n * ffn) + output)
    encoder = self_attention(s) + s * ffn
    decoder = (self_attention(t)
               + 2 * t * d * d + 2 * s * d * kv       # cross-attention Q, O and K, V
               + 2 * t * s * d                        # cross-attention scores and values
               + t * ffn)
    return 2.0 * (cfg.num_encoder_layers * encoder + cfg.num_decoder_layers * decoder + output)


def train_flops(cfg: ModelConfig, src_len: int, tgt_len: int, rows: int) -> float:
    """FLOPs of one training step (forward and backward) over ``rows`` rows of these lengths."""
    return 3.0 * rows * forward_flops(cfg, src_len, tgt_len)


# Dense (no sparsity) bfloat16 peak FLOP/s, memory and memory bandwidth per chip, from the
# makers' data sheets: NVIDIA's H100, H200 and A100 product pages (SXM parts; the PCIe
# H100 has its own row) and Google Cloud's TPU system architecture pages (v4, v5e, v5p,
# v6e). Matched by the start of ``device.device_kind`` (longest first). On a GPU JAX
# reserves 75% of the memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION), less than this.
CHIPS: dict[str, tuple[float, float, float]] = {  # prefix -> (FLOP/s, GiB, bytes/s)
    'NVIDIA H100 PCIe': (756e12, 80, 2.0e12),
    'NVIDIA H100 NVL': (835e12, 94, 3.9e12),
    'NVIDIA H100': (989e12, 80, 3.35e12),
    'NVIDIA H200': (989e12, 141, 4.8e12),
    'NVIDIA A100-SXM4-40GB': (312e12, 40, 1.555e12),
    'NVIDIA A100-PCIE-40GB': (312e12, 40, 1.555e12),
    'NVIDIA A100': (312e12, 80, 2.0e12),
    'TPU v4': (275e12, 32, 1.2e12),
    'TPU v5 lite': (197e12, 16, 0.819e12),
    'TPU v5': (459e12, 95, 2.765e12),        # v5p
    'TPU v6 lite': (918e12, 32, 1.64e12),    # v6e (Trillium)
}


def chip(device_kind: str) -> tuple[float, float, float] | None:
    """(bf16 peak FLOP/s, memory GiB, memory bytes/s) of the chip named ``device_kind``, or
    None if it is not in ``CHIPS``."""
    for prefix in sorted(CHIPS, key=len, reverse=True):
        if device_kind.startswith(prefix):
            return CHIPS[prefix]
    return None


def measured_matmul_flops(dtype=jnp.bfloat16, n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of an n^3 ``jnp.dot`` on the default device (float32 accumulation), median of
    ``repeats`` after one warm-up: the peak a CPU is held to (it has no data sheet here)."""
    rng = np.random.default_rng(0)  # host-made operands: no extra programs to compile
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / sorted(times)[len(times) // 2]


def peak_flops_per_device(dtype=jnp.bfloat16, device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from) for MFU.

    An accelerator's published dense bf16 peak; a CPU's (or an unknown chip's) measured
    matmul speed in ``dtype`` (the model's matmul operands), taken now (a fraction of a
    second).
    """
    device = device or jax.devices()[0]
    known = chip(device.device_kind) if device.platform != 'cpu' else None
    if known:
        return known[0], f'{device.device_kind} data sheet (bf16 dense)'
    measured = measured_matmul_flops(dtype)
    return measured, (f'measured {jnp.dtype(dtype).name} matmul on {device.device_kind} '
                      f'({measured / 1e9:.0f} GFLOP/s)')
