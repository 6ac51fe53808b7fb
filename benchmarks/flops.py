"""Model FLOPs of one Transformer pass, counted the way utilization (MFU) is defined here.

2 FLOPs per multiply-add of: the Q/K/V/O projections; attention scores and values over the
full score matrix; both feed-forward matmuls; the cross-attention K/V projections of every
decoder layer; the output projection. Training = 3 x forward (backward is twice forward).
Embedding lookups, softmax, layer norms and the optimizer are not counted.
"""

from __future__ import annotations

from transformer.model import SIZES


def forward_flops(variant: str, vocab: int, src_len: int, tgt_len: int) -> float:
    """FLOPs of one forward pass over one (source, target) example."""
    d, d_ff, _, n_enc, n_dec = SIZES[variant]
    s, t = src_len, tgt_len
    encoder = 4 * s * d * d + 2 * s * s * d + 2 * s * d * d_ff
    decoder = (4 * t * d * d + 2 * t * t * d          # self-attention
               + 2 * t * d * d + 2 * s * d * d        # cross-attention Q, O and K, V
               + 2 * t * s * d                        # cross-attention scores and values
               + 2 * t * d * d_ff)                    # feed-forward
    output = t * d * vocab
    return 2.0 * (n_enc * encoder + n_dec * decoder + output)


def train_flops(variant: str, vocab: int, src_len: int, tgt_len: int, batch: int) -> float:
    """FLOPs of one training step (forward + backward) over ``batch`` examples."""
    return 3.0 * batch * forward_flops(variant, vocab, src_len, tgt_len)
