"""The accelerator check: bfloat16 train steps of base and big with every attention
implementation and remat setting, beam search, and the dropout-key implementations, on
the default device (one GPU), each case in its own process.

    python -m benchmarks.accelerator                 # everything (benchmarks/accelerator.sh)
    python -m benchmarks.accelerator --cases base_    # cases whose name starts with this

Prints one table: tokens/s, MFU against the chip's published dense bf16 peak
(``transformer.flops.CHIPS``) and against a bf16 matmul measured in the same run, the
device's peak memory, and compile time. Rows of 256 tokens (source and target), no padding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import median_seconds
from benchmarks.jax_cases import _synthetic_batch, time_train_step
from transformer import decode, flops
from transformer.model import EncoderDecoder, ModelConfig
from transformer.tokenizer import BOS_ID

LENGTH, VOCAB = 256, 32000
ROWS = {'base': 64, 'big': 32}   # 16k / 8k target tokens per step

CASES = {'matmul': ('matmul', {})}
for _variant in ('base', 'big'):
    for _impl in ('xla', 'cudnn'):
        for _remat in ('none', 'dots', 'full'):
            CASES[f'{_variant}_{_impl}_{_remat}'] = (
                'train', dict(variant=_variant, attention_impl=_impl, remat=_remat))
    CASES[f'{_variant}_beam4'] = ('beam', dict(variant=_variant))
for _prng in ('threefry2x32', 'rbg', 'unsafe_rbg'):
    CASES[f'base_xla_none_{_prng}'] = ('train', dict(variant='base', attention_impl='xla',
                                                     remat='none', prng=_prng))


def _peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats['peak_bytes_in_use'] / 2 ** 30 if 'peak_bytes_in_use' in stats else None


def matmul() -> dict:
    return {'measured_bf16_flops': flops.measured_matmul_flops(jnp.bfloat16, n=8192, repeats=5)}


def train(variant: str, attention_impl: str, remat: str, prng: str = '', *,
          rows: int | None = None, length: int = LENGTH) -> dict:
    """One bf16 train step (forward, backward, Adam; dropout 0.1) on a synthetic batch of
    ``rows`` (default ``ROWS[variant]``) rows of ``length`` tokens."""
    if prng:
        jax.config.update('jax_default_prng_impl', prng)
    rows = rows or ROWS[variant]
    cfg = ModelConfig.make(variant, VOCAB, dtype='bfloat16', attention_impl=attention_impl,
                           remat=remat)
    return {**time_train_step(cfg, rows, length, length, warmup=3, repeats=10),
            'peak_memory_gib': _peak_memory_gib()}


def beam(variant: str) -> dict:
    """Beam 4 over 64 sentences of 64 tokens, run to full length (64 target tokens each)."""
    rows, length = 64, 64
    model = EncoderDecoder(ModelConfig.make(variant, VOCAB, dropout_rate=0.0, dtype='bfloat16'),
                           rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    src = _synthetic_batch(rows, length, length, VOCAB)['inputs']

    def run(params, src):
        return decode.model_beam_search(nnx.merge(graphdef, params), src, beam_size=4,
                                        alpha=0.6, bos_id=BOS_ID, eos_id=-1, max_len=length)

    compiled = jax.jit(run).lower(params, src).compile()
    seconds = median_seconds(lambda: compiled(params, src).block_until_ready(), warmup=1,
                             repeats=5)
    return {'step_s': seconds, 'tokens_per_s': rows * length / seconds,
            'peak_memory_gib': _peak_memory_gib()}


def table(results: list[dict]) -> str:
    device = jax.devices()[0].device_kind
    chip = flops.chip(device)
    measured = next((r['measured_bf16_flops'] for r in results if 'measured_bf16_flops' in r), None)
    lines = [f'device: {device}; published dense bf16 peak '
             + (f'{chip[0] / 1e12:.0f} TFLOP/s' if chip else 'unknown')
             + (f'; measured bf16 matmul {measured / 1e12:.0f} TFLOP/s' if measured else ''),
             '', '| case | tokens/s | MFU (published) | MFU (measured matmul) | peak memory GiB '
             '| compile s |', '|---|---|---|---|---|---|']
    for r in results:
        if 'tokens_per_s' not in r:
            if 'error' in r:
                lines.append(f'| {r["case"]} | error: {r["error"][:120]} | | | | |')
            continue
        achieved = r['model_flops'] / r['step_s'] if 'model_flops' in r else None
        mfu = [f'{achieved / peak:.1%}' if achieved and peak else '-'
               for peak in ((chip[0] if chip else None), measured)]
        memory = f'{r["peak_memory_gib"]:.1f}' if r.get('peak_memory_gib') else '-'
        compile_s = f'{r["compile_s"]:.0f}' if 'compile_s' in r else '-'
        lines.append(f'| {r["case"]} | {r["tokens_per_s"]:,.0f} | {mfu[0]} | {mfu[1]} | '
                     f'{memory} | {compile_s} |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default='', help='comma-separated name prefixes')
    parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
    parser.add_argument('--out', default='', help='also append one JSON line per case here')
    args = parser.parse_args()
    if args.worker:
        function, kwargs = CASES[args.worker]
        print('RESULT ' + json.dumps(globals()[function](**kwargs)), flush=True)
        return
    prefixes = [p for p in args.cases.split(',') if p]
    names = [n for n in CASES if not prefixes or n == 'matmul' or n.startswith(tuple(prefixes))]
    results = []
    for name in names:
        out = subprocess.run([sys.executable, '-m', 'benchmarks.accelerator', '--worker', name],
                             capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith('RESULT ')]
        result = (json.loads(lines[-1][7:]) if lines else
                  {'error': (out.stderr.strip().splitlines() or ['no output'])[-1]})
        result['case'] = name
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, 'a') as f:
                f.write(json.dumps(result) + '\n')
    print(table(results))


if __name__ == '__main__':
    np.set_printoptions(precision=3)
    main()
