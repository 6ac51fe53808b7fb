"""The benchmark suite's arithmetic and plumbing (the timed runs themselves live in `make bench`)."""

import json
import os
import subprocess
import sys

from benchmarks.__main__ import add_utilization, ratios, table
from conftest import ROOT
from transformer import flops
from transformer.model import ModelConfig


def test_forward_flops_count_each_matmul_once():
    # small: d=256, d_ff=1024, 3+3 layers; source and target of 32 tokens; vocab 8192.
    d, f, s, t, v = 256, 1024, 32, 32, 8192
    encoder = 3 * (4 * s * d * d + 2 * s * s * d + 2 * s * d * f)
    decoder = 3 * (4 * t * d * d + 2 * t * t * d + 2 * t * d * d + 2 * s * d * d
                   + 2 * t * s * d + 2 * t * d * f)
    cfg = ModelConfig.make('small', v)
    assert flops.forward_flops(cfg, s, t) == 2 * (encoder + decoder + t * d * v)
    assert flops.train_flops(cfg, s, t, 64) == 3 * 64 * flops.forward_flops(cfg, s, t)


def test_utilization_and_ratios_use_the_peaks_of_the_same_run():
    results = [{'case': 'matmul_peaks', 'peak_gflops_float32': 100.0, 'peak_gflops_bfloat16': 200.0},
               {'case': 'train_small_float32', 'dtype': 'float32', 'step_s': 2.0,
                'tokens_per_s': 1024.0, 'model_flops': 100e9},
               {'case': 'torch_train_small_bfloat16', 'dtype': 'bfloat16', 'step_s': 4.0,
                'tokens_per_s': 512.0, 'model_flops': 100e9}]
    add_utilization(results)
    assert results[1]['mfu_vs_float32_peak'] == 0.5 and results[1]['mfu_vs_bfloat16_peak'] == 0.25
    assert ratios(results) == ['train small: ours 1,024 tok/s (float32) / PyTorch 512 tok/s '
                               '(bfloat16) = 2.00x']


def test_the_dropout_mask_case_is_reported_against_its_reference():
    results = [{'case': 'dropout_masks', 'step_s': 0.05, 'reference_step_s': 0.2,
                'elements_per_s': 1.8e8, 'peak_rss_mib': 300.0}]
    assert ratios(results) == ['dropout masks of a small step: 50 ms (a byte per element) vs '
                               '200 ms (jax.random.bernoulli, a word per element) = 0.25x']
    assert '180,000,000 elem/s' in table(results)


def test_mixed_precision_and_loss_head_are_reported_against_float32_and_autodiff():
    results = [{'case': 'train_small_float32', 'dtype': 'float32', 'step_s': 0.2,
                'tokens_per_s': 5000.0},
               {'case': 'train_small_mixed', 'dtype': 'mixed', 'step_s': 0.15,
                'tokens_per_s': 6000.0},
               {'case': 'loss_head', 'step_s': 0.01, 'reference_step_s': 0.04,
                'tokens_per_s': 1e5, 'peak_rss_mib': 300.0}]
    assert ratios(results) == [
        'mixed precision (bfloat16 matmul operands, float32 elsewhere): small step 150 ms vs '
        '200 ms float32 = 0.75x',
        'loss head (logits, smoothed loss and their gradients): 10.0 ms (own gradient) vs '
        '40.0 ms (autodiff through log_softmax) = 0.25x']


def test_unknown_case_is_named():
    out = subprocess.run([sys.executable, '-m', 'benchmarks', '--cases', 'train_huge'],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Unknown case(s) ['train_huge']" in out.stderr


def test_a_case_runs_in_its_own_process_and_writes_json(tmp_path):
    out_file = tmp_path / 'bench.jsonl'
    out = subprocess.run([sys.executable, '-m', 'benchmarks', '--cases', 'dropout_masks',
                          '--matmul_size', '512'],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, BENCH_OUT=str(out_file)))
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r['case'] for r in records] == ['matmul_peaks', 'dropout_masks']
    assert records[0]['peak_gflops_float32'] > 0 and records[1]['elements_per_s'] > 0


def test_the_accelerator_check_times_a_train_case_and_tabulates_it():
    """benchmarks/accelerator.py on CPU, with the tiny model: the harness a GPU run uses."""
    from benchmarks import accelerator
    result = accelerator.train('tiny', 'xla', 'none', rows=2, length=8)
    assert result['tokens_per_s'] > 0 and result['model_flops'] > 0
    text = accelerator.table([{'case': 'matmul', 'measured_bf16_flops': 1e12},
                              {**result, 'case': 'tiny_xla_none'}])
    assert text.splitlines()[0].startswith('device: cpu; published dense bf16 peak unknown')
    assert '| tiny_xla_none |' in text


def test_decoding_is_reported_against_ctranslate2_float32_with_its_int8_beside():
    results = [{'case': 'beam_small_float32', 'dtype': 'float32', 'tokens_per_s': 1000.0},
               {'case': 'beam_small_bfloat16', 'dtype': 'bfloat16', 'tokens_per_s': 1500.0},
               {'case': 'ct2_beam_small_float32', 'tokens_per_s': 3000.0},
               {'case': 'ct2_beam_small_int8', 'tokens_per_s': 6000.0}]
    assert ratios(results) == ['beam small: ours 1,500 tok/s (bfloat16) / CTranslate2 float32 '
                               '3,000 tok/s = 0.50x; its int8 6,000 tok/s = 0.25x']
