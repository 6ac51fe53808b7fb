"""The PyTorch peer: ``torch.nn.Transformer`` trained at the same sizes, eager or under
``torch.compile``.

Same model as ours where it matters for speed: post-LN, ReLU, shared input/output
embedding, sinusoidal positions, label-smoothed cross-entropy, Adam inside the step. The
bfloat16 variant runs under CPU autocast (float32 parameters), as PyTorch users do. Compiled,
the forward pass and loss go through ``torch.compile`` (TorchInductor, which needs a C++
compiler) and autograd runs its compiled backward; Adam stays eager.
Install with ``pip install -r benchmarks/requirements.txt`` (not a runtime dependency).
"""

from __future__ import annotations

import math
import os
import time

from benchmarks.common import TRAIN_SIZES, median_seconds, peak_rss_mib
from transformer.flops import train_flops
from transformer.model import SIZES, ModelConfig


def train_step(size: str, dtype: str, dropout: float, *, compiled: bool = False, warmup: int = 2,
               repeats: int = 5) -> dict:
    import torch

    run = make_train_step(size, dtype, dropout, compiled=compiled)
    variant, vocab, batch, src_len, tgt_len = TRAIN_SIZES[size]
    start = time.perf_counter()
    run()  # the first step pays allocation and kernel selection: PyTorch's "compile"
    first_s = time.perf_counter() - start
    seconds = median_seconds(run, warmup=warmup, repeats=repeats)
    return {'step_s': seconds, 'tokens_per_s': batch * tgt_len / seconds,
            'compile_s': max(first_s - seconds, 0.0),
            'model_flops': train_flops(ModelConfig.make(variant, vocab), src_len, tgt_len, batch),
            'peak_rss_mib': peak_rss_mib(), 'torch': torch.__version__}


def make_train_step(size: str, dtype: str, dropout: float, *, compiled: bool = False):
    """A function running one optimizer step of the peer on a fixed random batch."""
    import torch
    from torch import nn

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    variant, vocab, batch, src_len, tgt_len = TRAIN_SIZES[size]
    d, d_ff, heads, n_enc, n_dec = SIZES[variant]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.core = nn.Transformer(d, heads, n_enc, n_dec, d_ff, dropout, batch_first=True)
            position = torch.arange(512)[:, None]
            inv_freq = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
            pe = torch.zeros(512, d)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(position * inv_freq), torch.cos(position * inv_freq)
            self.register_buffer('pe', pe)
            self.drop = nn.Dropout(dropout)

        def embed_tokens(self, tokens):
            return self.drop(self.embed(tokens) * math.sqrt(d) + self.pe[:tokens.shape[1]])

        def forward(self, src, tgt_in):
            causal = self.core.generate_square_subsequent_mask(tgt_in.shape[1])
            y = self.core(self.embed_tokens(src), self.embed_tokens(tgt_in), tgt_mask=causal,
                          tgt_is_causal=True)
            return y @ self.embed.weight.t()

    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    src = torch.randint(4, vocab, (batch, src_len))
    tgt = torch.randint(4, vocab, (batch, tgt_len))
    tgt_in = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)

    def compute_loss(src, tgt_in, tgt):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
            logits = model(src, tgt_in)
        return nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tgt.reshape(-1),
                                           label_smoothing=0.1)

    loss_fn = torch.compile(compute_loss) if compiled else compute_loss

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(src, tgt_in, tgt).backward()
        optimizer.step()

    return run
