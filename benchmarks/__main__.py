"""The benchmark suite: ``python -m benchmarks`` (or ``make bench``).

    python -m benchmarks                          # every case
    python -m benchmarks --cases train_small      # cases whose name starts with one of these
    BENCH_OUT=bench.jsonl python -m benchmarks    # also append one JSON line per case

Each case runs in its own process (its own peak memory, no state carried over), one after
the other. The matmul peaks are measured in the same run, so utilization (MFU) and the
ratios to the PyTorch peer come from side-by-side numbers on the same, possibly busy,
machine. Compile time is excluded from step times (median of timed steps after warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks import profile
from benchmarks.common import columns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (implementation, function, keyword arguments)
CASES = {'matmul_peaks': ('jax', 'matmul_peaks', {})}
for _size in ('small', 'base'):
    for _dtype in ('float32', 'bfloat16', 'mixed'):
        for _dropout in (0.1, 0.0):
            _suffix = '' if _dropout else '_nodropout'
            CASES[f'train_{_size}_{_dtype}{_suffix}'] = (
                'jax', 'train_step', dict(size=_size, dtype=_dtype, dropout=_dropout))
        if _dtype != 'mixed':
            for _compiled in (False, True):
                CASES[f'torch_{"compile_" if _compiled else ""}train_{_size}_{_dtype}'] = (
                    'torch', 'train_step',
                    dict(size=_size, dtype=_dtype, dropout=0.1, compiled=_compiled))
for _kind in ('beam', 'greedy'):
    for _dtype in ('float32', 'bfloat16'):
        CASES[f'{_kind}_small_{_dtype}'] = ('jax', 'decoding', dict(kind=_kind, dtype=_dtype))
    for _compute in ('float32', 'int8'):  # the decoding peer: CTranslate2, same model size
        CASES[f'ct2_{_kind}_small_{_compute}'] = ('ct2', 'decoding',
                                                 dict(kind=_kind, compute_type=_compute))
# The decoder-only model of the same size: its source is part of every step's attention.
CASES['beam_small_decoder_only_bfloat16'] = ('jax', 'decoding', dict(
    kind='beam', dtype='bfloat16', architecture='decoder_only'))
# The same step with glibc's malloc defaults (transformer.host_memory not applied).
CASES['train_small_float32_malloc_defaults'] = CASES['train_small_float32']
MALLOC_DEFAULTS_SUFFIX = '_malloc_defaults'
CASES['input_pipeline'] = ('jax', 'input_pipeline', {})
# The same with subword regularization: every segmentation drawn per example, in Python.
CASES['input_pipeline_subword'] = ('jax', 'input_pipeline', dict(subword_nbest=8))
CASES['dropout_masks'] = ('jax', 'dropout_masks', {})
CASES['loss_head'] = ('jax', 'loss_head', {})
CASES['canonical_matmul'] = ('jax', 'canonical_matmul', {})
# Where the train step's and beam search's time goes, by kind of operation
# (benchmarks/profile.py).
CASES['profile_beam_small'] = ('jax', 'decoding_profile', dict(kind='beam', dtype='bfloat16'))
for _size in ('small', 'base'):
    CASES[f'profile_train_{_size}'] = ('jax', 'jax_profile', dict(size=_size, dtype='mixed'))
    CASES[f'torch_profile_train_{_size}'] = ('torch', 'torch_profile',
                                            dict(size=_size, dtype='bfloat16'))
# Compile time of a 24 + 24-layer model's train step: unrolled layers against scanned.
for _scan in (False, True):
    CASES[f'compile_deep_{"scanned" if _scan else "unrolled"}'] = (
        'jax', 'deep_compile', dict(scan_layers=_scan))

# XLA:CPU flag sets (XLA_FLAGS), each timed on the small and base mixed-precision train
# steps: which library runs the matmuls (YNNPACK, XNNPACK or oneDNN) and what it fuses, and
# the LLVM code generator's vector width, ISA and fast math.
NO_YNN = '--xla_cpu_experimental_ynn_fusion_type='  # an empty list: YNNPACK runs nothing
XLA_FLAG_SETS = {
    'default': '',
    'ynn_off': NO_YNN,
    'ynn_eltwise_reduce': '--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce',
    'xnn_dot': f'{NO_YNN} --xla_cpu_experimental_xnn_fusion_type=dot',
    'xnn_graph': f'{NO_YNN} --xla_cpu_experimental_xnn_graph_fusion_mode='
                 'XNN_GRAPH_FUSION_MODE_GREEDY',
    'onednn_custom_call': f'{NO_YNN} --xla_cpu_use_onednn=true '
                          '--xla_cpu_experimental_onednn_custom_call=true',
    'onednn_dot': f'{NO_YNN} --xla_cpu_use_onednn=true '
                  '--xla_cpu_experimental_onednn_fusion_type=dot',
    'onednn_dot_eltwise': f'{NO_YNN} --xla_cpu_use_onednn=true '
                          '--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce',
    'vector_width_512': '--xla_cpu_prefer_vector_width=512',
    'max_isa_avx2': '--xla_cpu_max_isa=AVX2',
    'fast_math': '--xla_cpu_enable_fast_math=true',
    'concurrency_scheduler': '--xla_cpu_enable_concurrency_optimized_scheduler=true',
}
for _name, _flags in XLA_FLAG_SETS.items():
    for _size in ('small', 'base'):
        CASES[f'xla_flags_{_size}_{_name}'] = (
            'jax', 'train_step', dict(size=_size, dtype='mixed', dropout=0.1, xla_flags=_flags))


def run_case(name: str, multi30k_dir: str, timeout_s: float, matmul_size: int) -> dict:
    """Runs one case in a fresh process; returns its measurements (or its error)."""
    impl, function, kwargs = CASES[name]
    if function == 'input_pipeline' and not os.path.isdir(multi30k_dir or ''):
        return {'case': name, 'skipped': f'no Multi30k folder (--multi30k_dir={multi30k_dir!r})'}
    cmd = [sys.executable, '-m', 'benchmarks', '--worker', name, '--multi30k_dir', multi30k_dir,
           '--matmul_size', str(matmul_size)]
    env = dict(os.environ)
    env['TRANSFORMER_MALLOC_DEFAULTS'] = '1' if name.endswith(MALLOC_DEFAULTS_SUFFIX) else '0'
    if 'xla_flags' in kwargs:
        env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {kwargs["xla_flags"]}'.strip()
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {'case': name, 'error': f'not finished in {timeout_s:.0f} s (--timeout_s)'}
    lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ['(no output)'])[-1]
        return {'case': name, 'error': tail}
    result = json.loads(lines[-1][len('RESULT '):])
    result.update(case=name, impl=impl, **kwargs, wall_s=time.perf_counter() - start)
    return result


def worker(name: str, multi30k_dir: str, matmul_size: int) -> None:
    impl, function, kwargs = CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != 'xla_flags'}  # set in XLA_FLAGS
    if function == 'matmul_peaks':
        kwargs = dict(kwargs, n=matmul_size)
    if impl == 'jax':  # as train.py does, before JAX starts (TRANSFORMER_MALLOC_DEFAULTS opts out)
        from transformer import host_memory, platform_settings
        host_memory.keep_freed_memory()
        platform_settings.configure()
    if function == 'input_pipeline':
        kwargs = dict(kwargs, manual_dir=multi30k_dir)
    if function.endswith('_profile'):
        from benchmarks import profile as module
    elif impl == 'torch':
        from benchmarks import torch_peer as module
    elif impl == 'ct2':
        from benchmarks import ct2_peer as module
    else:
        from benchmarks import jax_cases as module
    print('RESULT ' + json.dumps(getattr(module, function)(**kwargs)), flush=True)


def add_utilization(results: list[dict]) -> None:
    """MFU against both matmul peaks of this run, and our speed as a ratio of the peer's."""
    peaks = next((r for r in results if r['case'] == 'matmul_peaks' and 'error' not in r), None)
    for r in results:
        if peaks and 'model_flops' in r:
            achieved = r['model_flops'] / r['step_s'] / 1e9
            r['gflops'] = achieved
            r['mfu_vs_float32_peak'] = achieved / peaks['peak_gflops_float32']
            r['mfu_vs_bfloat16_peak'] = achieved / peaks['peak_gflops_bfloat16']


# Cases timed against a reference in the same process: (what, ours, the reference, decimals).
AGAINST_REFERENCE = {
    'loss_head': ('loss head (logits, smoothed loss and their gradients)', 'own gradient',
                  'autodiff through log_softmax', 1),
    'dropout_masks': ('dropout masks of a small step', 'a byte per element',
                      'jax.random.bernoulli, a word per element', 0),
    'canonical_matmul': ('output layer matmuls, bfloat16 (x @ table.T, g @ table, g.T @ x)',
                         'row-major forms, layers.dot', 'transposed operands', 1),
}


def ratios(results: list[dict]) -> list[str]:
    by = {r['case']: r for r in results if 'tokens_per_s' in r}
    by_case = {r['case']: r for r in results}
    lines = []
    for size in ('small', 'base'):
        ours = [by[k] for k in (f'train_{size}_float32', f'train_{size}_bfloat16',
                                f'train_{size}_mixed') if k in by]
        peers = [by[f'torch_{mode}train_{size}_{dtype}'] for mode in ('', 'compile_')
                 for dtype in ('float32', 'bfloat16') if f'torch_{mode}train_{size}_{dtype}' in by]
        if ours and peers:
            def rate(r):
                return r['tokens_per_s']
            best, peer = max(ours, key=rate), max(peers, key=rate)
            lines.append(f'train {size}: ours {best["tokens_per_s"]:,.0f} tok/s ({best["dtype"]}) / '
                         f'PyTorch {peer["tokens_per_s"]:,.0f} tok/s ({peer["dtype"]}, '
                         f'{"torch.compile" if peer.get("compiled") else "eager"}) = '
                         f'{best["tokens_per_s"] / peer["tokens_per_s"]:.2f}x')
    for kind in ('beam', 'greedy'):
        ours = [by[k] for k in (f'{kind}_small_float32', f'{kind}_small_bfloat16') if k in by]
        peer, peer_int8 = by.get(f'ct2_{kind}_small_float32'), by.get(f'ct2_{kind}_small_int8')
        if ours and peer:
            best = max(ours, key=lambda r: r['tokens_per_s'])
            int8 = (f'; its int8 {peer_int8["tokens_per_s"]:,.0f} tok/s = '
                    f'{best["tokens_per_s"] / peer_int8["tokens_per_s"]:.2f}x') if peer_int8 else ''
            lines.append(f'{kind} small: ours {best["tokens_per_s"]:,.0f} tok/s ({best["dtype"]}) / '
                         f'CTranslate2 float32 {peer["tokens_per_s"]:,.0f} tok/s = '
                         f'{best["tokens_per_s"] / peer["tokens_per_s"]:.2f}x{int8}')
    pipe = by_case.get('input_pipeline')
    if pipe and 'examples_per_s' in pipe and 'train_small_float32' in by:
        consumed = 64 / by['train_small_float32']['step_s']  # examples per second
        lines.append(f'input pipeline (one core): {pipe["examples_per_s"]:,.0f} examples/s = '
                     f'{pipe["examples_per_s"] / consumed:.1f}x what the small float32 train step '
                     f'consumes ({consumed:,.0f}/s)')
    tuned, defaults = by.get('train_small_float32'), by.get('train_small_float32' + MALLOC_DEFAULTS_SUFFIX)
    if tuned and defaults:
        lines.append(f'host memory kept (transformer.host_memory): small float32 step '
                     f'{1000 * tuned["step_s"]:.0f} ms vs {1000 * defaults["step_s"]:.0f} ms with '
                     f'glibc malloc defaults = {tuned["step_s"] / defaults["step_s"]:.2f}x; peak '
                     f'{tuned["peak_rss_mib"]:,.0f} vs {defaults["peak_rss_mib"]:,.0f} MiB')
    for size in ('small', 'base'):
        mixed, f32 = by.get(f'train_{size}_mixed'), by.get(f'train_{size}_float32')
        if mixed and f32:
            lines.append(f'mixed precision (bfloat16 matmul operands, float32 elsewhere): {size} '
                         f'step {1000 * mixed["step_s"]:.0f} ms vs {1000 * f32["step_s"]:.0f} ms '
                         f'float32 = {mixed["step_s"] / f32["step_s"]:.2f}x')
    unrolled, scanned = by_case.get('compile_deep_unrolled'), by_case.get('compile_deep_scanned')
    if unrolled and scanned and 'compile_s' in unrolled and 'compile_s' in scanned:
        lines.append(f'compile time, 24 + 24 layers (train step): unrolled '
                     f'{unrolled["compile_s"]:.1f} s, scanned {scanned["compile_s"]:.1f} s = '
                     f'{unrolled["compile_s"] / scanned["compile_s"]:.1f}x faster scanned')
    for case, (what, ours, reference, digits) in AGAINST_REFERENCE.items():
        r = by_case.get(case)
        if r and 'reference_step_s' in r:
            lines.append(f'{what}: {1000 * r["step_s"]:.{digits}f} ms ({ours}) vs '
                         f'{1000 * r["reference_step_s"]:.{digits}f} ms ({reference}) = '
                         f'{r["step_s"] / r["reference_step_s"]:.2f}x')
    return lines


RATE_UNITS = (('tokens_per_s', ''), ('examples_per_s', ' ex/s'), ('elements_per_s', ' elem/s'),
              ('gflops', ' GFLOP/s'))


def table(results: list[dict]) -> str:
    head = ('case', 'step ms', 'tok/s', 'MFU f32', 'MFU bf16', 'compile s', 'peak MiB')
    rows = [head]
    for r in results:
        if 'error' in r or 'skipped' in r:
            rows.append((r['case'], r.get('error') or r['skipped'], '', '', '', '', ''))
            continue
        if r['case'] == 'matmul_peaks':
            rows.append(('matmul 4096^3 GFLOP/s', f'f32 {r["peak_gflops_float32"]:.0f}',
                         f'bf16 {r["peak_gflops_bfloat16"]:.0f}', '', '', '', ''))
            continue
        rate = next((f'{r[key]:,.0f}{unit}' for key, unit in RATE_UNITS if key in r), '')
        rows.append((r['case'], f'{1000 * r["step_s"]:.1f}' if 'step_s' in r else '', rate,
                     f'{100 * r["mfu_vs_float32_peak"]:.0f}%' if 'mfu_vs_float32_peak' in r else '',
                     f'{100 * r["mfu_vs_bfloat16_peak"]:.0f}%' if 'mfu_vs_bfloat16_peak' in r else '',
                     f'{r["compile_s"]:.1f}' if 'compile_s' in r else '',
                     f'{r["peak_rss_mib"]:,.0f}' if 'peak_rss_mib' in r else ''))
    return columns(rows)


def flag_table(results: list[dict]) -> str:
    """Markdown: each XLA flag set's train step time against the default flags', the
    libraries running its matmuls, and how far its first losses are from the default's."""
    by = {r['case']: r for r in results if r['case'].startswith('xla_flags_')}
    if not by:
        return ''
    rows = ['| flags | ' + ' | '.join(f'{size} step (ms)' for size in ('small', 'base'))
            + ' | matmuls by | loss difference |', '|---|---|---|---|---|']
    for name, flags in XLA_FLAG_SETS.items():
        cells, libraries, differences = [], '', []
        for size in ('small', 'base'):
            r, default = by.get(f'xla_flags_{size}_{name}'), by.get(f'xla_flags_{size}_default')
            if not r:
                cells.append('')
            elif 'error' in r:
                cells.append(r['error'][:40])
            else:
                ratio = (f' ({r["step_s"] / default["step_s"]:.2f}x)'
                         if default and 'step_s' in default else '')
                cells.append(f'{1000 * r["step_s"]:.0f}{ratio}')
                libraries = ', '.join(f'{lib} {count}' for lib, count in
                                      r['library_fusions'].items()) or 'XLA (Eigen)'
                if default and 'first_losses' in default:
                    differences += [abs(a - b) for a, b in zip(r['first_losses'],
                                                               default['first_losses'])]
        difference = f'{max(differences):.1e}' if differences else ''
        rows.append(f'| {name}: `{flags or "(none)"}` | ' + ' | '.join(cells)
                    + f' | {libraries} | {difference} |')
    return '\n'.join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', default='', help='comma-separated name prefixes; '
                        f'default all: {", ".join(CASES)}')
    parser.add_argument('--multi30k_dir', default=os.environ.get('MULTI30K_DIR', ''),
                        help='raw Multi30k files, for the input_pipeline case')
    parser.add_argument('--timeout_s', type=float, default=300.0,
                        help='a case still running after this long is recorded as unfinished')
    parser.add_argument('--matmul_size', type=int, default=4096,
                        help='n of the n^3 matmul whose speed is the peak (smaller: a quick '
                        'check of the harness, not a peak)')
    parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.multi30k_dir, args.matmul_size)

    prefixes = [p for p in args.cases.split(',') if p]
    unknown = [p for p in prefixes if not any(name.startswith(p) for name in CASES)]
    if unknown:
        raise SystemExit(f'Unknown case(s) {unknown}; valid: {", ".join(CASES)}')
    names = [n for n in CASES if not prefixes or any(n.startswith(p) for p in prefixes)]
    if 'matmul_peaks' not in names:
        names.insert(0, 'matmul_peaks')  # every run measures its own peaks
    out_path = os.environ.get('BENCH_OUT')
    machine = {'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
               'time': time.strftime('%Y-%m-%dT%H:%M:%S')}
    results = []
    for name in names:
        print(f'[{len(results) + 1}/{len(names)}] {name} ...', end=' ', flush=True)
        result = run_case(name, args.multi30k_dir, args.timeout_s, args.matmul_size)
        results.append(result)
        if out_path:  # as each case ends, so an interrupted run keeps what it measured
            with open(out_path, 'a') as f:
                f.write(json.dumps({**machine, **result}) + '\n')
        print(result.get('error') or result.get('skipped') or f'{result.get("wall_s", 0):.0f} s',
              flush=True)
    add_utilization(results)
    print()
    print(table(results))
    for line in ratios(results):
        print(line)
    for extra in (flag_table(results), profile.table(results)):
        if extra:
            print('\n' + extra)
    if out_path:
        print(f'wrote {len(results)} JSON lines to {out_path}')


if __name__ == '__main__':
    main()
